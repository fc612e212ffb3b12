#pragma once
// `moe train-tokenizer`: a byte-level BPE vocabulary trained on the project's own corpus (tokenizer/bpe_trainer.h),
// written as a model directory's tokenizer files:
//   tokenizer.json         the template's pipeline (DeepSeek-V3's pre-tokenizer and byte-level decoder), its special
//                          tokens renumbered from 0 (BOS 0, EOS 1), the trained vocabulary and merges;
//   tokenizer_config.json  the template's (chat template, BOS/EOS/pad by content, add_bos_token) with
//                          tokenizer_class "PreTrainedTokenizerFast" (transformers loads "LlamaTokenizerFast" as a
//                          SentencePiece-style tokenizer with wrong ids: ../shared/fixtures/README.md's trap) and
//                          without the template's added_tokens_decoder (its ids belong to the template).
// Inputs as tokenize-corpus reads them: a file is one document, a .jsonl file one {"text": ...} per non-empty line.
#include <string>
#include <vector>

#include "tokenizer/bpe_trainer.h"

namespace moe::train {

struct TokenizerTrainingOptions {
  std::string template_dir = "models/deepseek-v3-tokenizer";  // tokenizer.json (+ tokenizer_config.json)
  std::string out_dir;
  BpeTrainerOptions bpe;
};

BpeTrainStats train_tokenizer(const std::vector<std::string>& files, const TokenizerTrainingOptions& options);

}  // namespace moe::train

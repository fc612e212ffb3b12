// Supervised fine-tuning: the loss mask of a rendered conversation covers exactly the assistant turns (checked
// against the template's text, decoded span by span), and the masked objective is the mean CE over exactly the
// targets that carry loss (checked against the model's logits and a CE computed here in double).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/model.h"
#include "train/ops.h"
#include "train/data.h"
#include "train/sft.h"

namespace moe::train {
namespace {

const nlohmann::json kConversation = nlohmann::json::parse(R"([
  {"role": "system", "content": "You are terse."},
  {"role": "user", "content": "Name a colour."},
  {"role": "assistant", "content": "Blue."},
  {"role": "user", "content": "Another one, please?"},
  {"role": "assistant", "content": "Green, then red."}
])");

TEST(Sft, MaskCoversExactlyTheAssistantTurns) {
  const Tokenizer tok = Tokenizer::load(test::kTinyModel);
  const SftExample ex = render_sft(tok, kConversation, "conv.jsonl:1");
  ASSERT_EQ(ex.ids.size(), ex.loss.size());
  // The pieces tokenized one by one are the whole rendering's tokens (the template ends with EOS already).
  EXPECT_EQ(ex.ids, tok.encode(tok.chat_template().render(kConversation, false), false));
  EXPECT_EQ(ex.ids.back(), *tok.eos_id());
  // The masked tokens form two spans, and they decode to the assistant contents with the end-of-turn token.
  std::vector<std::string> spans;
  for (size_t i = 0; i < ex.ids.size(); ++i) {
    if (!ex.loss[i]) continue;
    if (i == 0 || !ex.loss[i - 1]) spans.emplace_back();
    spans.back() += tok.decode(std::vector<int32_t>{ex.ids[i]});
  }
  const std::string eos = "<｜end▁of▁sentence｜>";
  EXPECT_EQ(spans, (std::vector<std::string>{"Blue." + eos, "Green, then red." + eos}));
  // Everything before the first span, the user turn and the role markers, carries none.
  const std::string prompt = tok.decode(std::vector<int32_t>(ex.ids.begin(), ex.ids.begin() + std::ptrdiff_t(
                                            std::find(ex.loss.begin(), ex.loss.end(), 1) - ex.loss.begin())));
  EXPECT_EQ(prompt, "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Name a colour.<｜Assistant｜>");
}

TEST(Sft, BadConversationsNameTheInput) {
  const Tokenizer tok = Tokenizer::load(test::kTinyModel);
  auto message_of = [&](const nlohmann::json& m) {
    try {
      render_sft(tok, m, "conv.jsonl:7");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(nlohmann::json::parse(R"([{"role":"user","content":"hi"}])")).find(
                "conv.jsonl:7: no assistant message"), std::string::npos);
  EXPECT_NE(message_of(nlohmann::json::parse(R"([])")).find("conv.jsonl:7: \"messages\" is not a non-empty list"),
            std::string::npos);
  EXPECT_NE(message_of(nlohmann::json::parse(R"([{"content":"hi"}])")).find("conv.jsonl:7: messages[0] is not an object"),
            std::string::npos);
}

TEST(Sft, CrossEntropySkipsRowsWithoutTarget) {
  std::vector<double> logits = {0.5, -1.0, 2.0, 0.25, 1.0, -0.5};
  const int32_t targets[2] = {-1, 2};
  const double loss = cross_entropy_fused(logits.data(), targets, 2, 3, 1.0);
  const double z = std::exp(0.25) + std::exp(1.0) + std::exp(-0.5);
  EXPECT_NEAR(loss, std::log(z) + 0.5, 1e-15);
  for (int v = 0; v < 3; ++v) EXPECT_EQ(logits[size_t(v)], 0.0);
}

TEST(Sft, MaskedLossIsTheMeanOverTargetsThatCarryLoss) {
  TrainModel model = TrainModel::load("tests/data/tiny-train/model");
  const int64_t b = 2, t = 10, V = model.config.vocab_size;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> id(0, int32_t(V) - 1);
  std::vector<int32_t> ids(size_t(b * t));
  std::vector<uint8_t> mask(size_t(b * t));
  for (auto& x : ids) x = id(rng);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7 + 3) % 5 < 3;  // 60% of the tokens carry loss
  const Objective obj{0.3, 1e-4};

  // Independent: the model's logits, and -log softmax at each target that carries loss, in double.
  const std::vector<float> logits = forward_logits(model, ids, b, t);
  double sum = 0;
  int64_t count = 0;
  for (int64_t s = 0; s < b; ++s)
    for (int64_t j = 0; j + 1 < t; ++j) {
      if (!mask[size_t(s * t + j + 1)]) continue;
      const float* l = logits.data() + (s * t + j) * V;
      double m = l[0], z = 0;
      for (int64_t v = 0; v < V; ++v) m = std::max(m, double(l[v]));
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - m);
      sum += std::log(z) + m - double(l[ids[size_t(s * t + j + 1)]]);
      ++count;
    }
  const LossParts masked = forward_loss(model, ids, b, t, obj, &mask);
  EXPECT_NEAR(masked.main_ce, sum / double(count), 1e-9 * masked.main_ce);

  // An all-ones mask is no mask: the same loss and the same gradients, exactly.
  model.zero_grad();
  const LossParts plain = forward_backward(model, ids, b, t, obj);
  std::vector<std::vector<float>> g;
  for (const auto& p : model.params) g.push_back(p->g);
  model.zero_grad();
  const std::vector<uint8_t> ones(ids.size(), 1);
  const LossParts all = forward_backward(model, ids, b, t, obj, nullptr, &ones);
  EXPECT_EQ(all.loss, plain.loss);
  for (size_t k = 0; k < g.size(); ++k) EXPECT_EQ(model.params[k]->g, g[k]) << model.params[k]->name;

  // No target carrying loss: both CEs are 0 and only the balance loss is left.
  const std::vector<uint8_t> none(ids.size(), 0);
  const LossParts empty = forward_loss(model, ids, b, t, obj, &none);
  EXPECT_EQ(empty.main_ce, 0.0);
  EXPECT_EQ(empty.mtp_ce, 0.0);
  EXPECT_EQ(empty.loss, empty.seq_aux);
}

// tokenize-corpus --sft: conversations packed into shards with their masks; read back, they are render_sft's
// output; the loader packs the masks along with the tokens; a corrupt or missing mask file is named.
TEST(Sft, ShardsCarryTheMasksAndTheLoaderPacksThem) {
  const std::string dir = test::temp_path("sft-data");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string in = dir + "/chats.jsonl";
  std::vector<nlohmann::json> convs;
  for (int i = 0; i < 5; ++i)
    convs.push_back(nlohmann::json::parse(R"([{"role":"user","content":"What is )" + std::to_string(i) +
                                          R"( plus one?"},{"role":"assistant","content":")" +
                                          std::to_string(i + 1) + R"(."}])"));
  convs.push_back(kConversation);
  {
    std::ofstream f(in);
    for (const auto& c : convs) f << nlohmann::json{{"messages", c}}.dump() << "\n";
  }
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel, o.out_dir = dir + "/data", o.sft = true;
  tokenize_corpus({in}, o);
  const Manifest m = Manifest::load(o.out_dir);
  EXPECT_TRUE(m.sft);
  std::vector<std::vector<uint8_t>> masks;
  const auto docs = m.read_split("train", &masks);
  const Tokenizer tok = Tokenizer::load(test::kTinyModel);
  ASSERT_EQ(docs.size(), convs.size());
  std::vector<int32_t> stream;
  std::vector<uint8_t> stream_mask;
  for (size_t i = 0; i < convs.size(); ++i) {
    const SftExample ex = render_sft(tok, convs[i], "x");
    EXPECT_EQ(docs[i], ex.ids) << i;
    EXPECT_EQ(masks[i], ex.loss) << i;
    stream.insert(stream.end(), ex.ids.begin(), ex.ids.end());
    stream_mask.insert(stream_mask.end(), ex.loss.begin(), ex.loss.end());
  }
  PackedLoader loader(docs, 1, false);
  loader.set_masks(masks);
  std::vector<uint8_t> mask;
  const std::vector<int32_t> ids = loader.next(2, 16, &mask);
  EXPECT_EQ(ids, std::vector<int32_t>(stream.begin(), stream.begin() + 32));
  EXPECT_EQ(mask, std::vector<uint8_t>(stream_mask.begin(), stream_mask.begin() + 32));

  const std::string mask_path = o.out_dir + "/train-00000.bin.mask";
  {
    std::fstream f(mask_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put(char(3));  // a loss bit moved: the checksum no longer agrees
  }
  try {
    m.read_split("train", &masks);
    FAIL() << "a corrupt mask was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(mask_path + ": checksum"), std::string::npos) << e.what();
  }
  std::filesystem::remove(mask_path);
  try {
    m.read_split("train", &masks);
    FAIL() << "a missing mask was not noticed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(mask_path + ": missing"), std::string::npos) << e.what();
  }
  // Plain text is not SFT input.
  o.out_dir = dir + "/bad";
  std::ofstream(dir + "/a.txt") << "text";
  EXPECT_THROW(tokenize_corpus({dir + "/a.txt"}, o), Error);
}

}  // namespace
}  // namespace moe::train

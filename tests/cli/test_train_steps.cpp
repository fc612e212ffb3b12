// `moe train-steps` (issue 10's check command) on tests/data/tiny-train: the JSON lines, the written tensors
// against the reference, and bad input ending in one clear line naming the file.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "run_moe.h"
#include "test_util.h"

namespace moe {
namespace {

const std::string kTrainDir = "tests/data/tiny-train";
using test::run_moe;


double rel_l2(const TensorView& got, const TensorView& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.as<const float>()[i], w = want.as<const float>()[i];
    num += (g - w) * (g - w);
    den += w * w;
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

TEST(TrainSteps, MatchesTheReference) {
  const std::string out = test::temp_path("train-steps.safetensors");
  const auto [code, text] =
      run_moe("train-steps --model " + kTrainDir + "/model --spec " + kTrainDir + "/train.json --out " + out, false);
  ASSERT_EQ(code, 0) << text;
  std::ifstream in(kTrainDir + "/train.json");
  const nlohmann::json spec = nlohmann::json::parse(in);
  std::istringstream lines(text);
  std::string line;
  size_t step = 0;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    ASSERT_LT(step, spec["steps"].size());
    for (const char* key : {"loss", "main_ce", "mtp_ce", "seq_aux", "grad_norm", "clip_scale"}) {
      const double want = spec["steps"][step][key].get<double>();
      EXPECT_LT(std::abs(j.at(key).get<double>() - want) / std::abs(want), 1e-5) << "step " << step + 1 << " " << key;
    }
    ++step;
  }
  EXPECT_EQ(step, 3u);
  SafetensorsFile got(out), ref(kTrainDir + "/train-reference.safetensors");
  std::set<std::string> got_names, ref_names;
  for (const auto& e : got.entries()) got_names.insert(e.name);
  for (const auto& e : ref.entries()) ref_names.insert(e.name);
  EXPECT_EQ(got_names, ref_names);  // grad.*, load.*, after3.*: the reference's names exactly
  for (const auto& e : ref.entries()) {
    const SafetensorsEntry* g = got.find(e.name);
    if (!g) continue;
    ASSERT_EQ(g->shape, e.shape) << e.name;
    ASSERT_EQ(g->dtype, DType::F32) << e.name;
    const double err = rel_l2(got.view(*g), ref.view(e));
    if (e.name.rfind("load.", 0) == 0)
      EXPECT_EQ(err, 0.0) << e.name;
    else
      EXPECT_LT(err, e.name.rfind("grad.", 0) == 0 ? 1e-4 : 1e-5) << e.name;
  }
}

// Writes train.json with `edit` applied, runs train-steps on it, expects exit 1 and a message with `expect`.
void expect_spec_error(const std::function<void(nlohmann::json&)>& edit, const std::string& expect) {
  std::ifstream in(kTrainDir + "/train.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  edit(spec);
  const std::string path = test::temp_path("bad-spec.json");
  std::ofstream(path) << spec.dump();
  const auto [code, text] = run_moe("train-steps --model " + kTrainDir + "/model --spec " + path + " --out " +
                                    test::temp_path("unused.safetensors"));
  EXPECT_EQ(code, 1) << text;
  EXPECT_NE(text.find(path), std::string::npos) << text;
  EXPECT_NE(text.find(expect), std::string::npos) << text;
}

TEST(TrainSteps, BadInputNamesTheFile) {
  {
    const auto [code, text] = run_moe("train-steps --model " + kTrainDir + "/model --spec /no/such/spec.json --out x");
    EXPECT_EQ(code, 1);
    EXPECT_NE(text.find("/no/such/spec.json"), std::string::npos) << text;
  }
  {
    const auto [code, text] = run_moe("train-steps --model /no/such/model --spec " + kTrainDir + "/train.json --out x");
    EXPECT_EQ(code, 1);
    EXPECT_NE(text.find("/no/such/model"), std::string::npos) << text;
  }
  expect_spec_error([](nlohmann::json& s) { s["batch"][1].erase(0); }, "batch[1] has 23 tokens");
  expect_spec_error([](nlohmann::json& s) { s["config"]["hidden_size"] = 32; }, "config.hidden_size is 32");
  expect_spec_error([](nlohmann::json& s) { s["batch"][0][3] = 512; }, "outside the vocabulary");
  expect_spec_error([](nlohmann::json& s) { s.erase("batch"); }, "batch is missing");
  expect_spec_error([](nlohmann::json& s) { s["hyper"]["lr"] = "fast"; }, "hyper.lr is not a number");
}

}  // namespace
}  // namespace moe

// The default model's resolution (cli/default_model.h): --model wins; else the first candidate with config.json and
// weights; else an error that names every place looked at, what was missing, and how to get the model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli/default_model.h"
#include "core/error.h"
#include "run_moe.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe::cli {
namespace {

std::string error_of(const std::string& model, const std::vector<std::string>& c) {
  try {
    resolve_model(model, c);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DefaultModel, ExplicitModelWins) {
  EXPECT_EQ(resolve_model("some/dir", {"/nonexistent"}), "some/dir");
}

TEST(DefaultModel, FirstCandidateWithWeights) {
  const std::string root = test::temp_path("default_model");
  fs::remove_all(root);
  const std::string no_weights = root + "/a", sharded = root + "/b", single = root + "/c";
  for (const auto& d : {no_weights, sharded, single}) {
    fs::create_directories(d);
    std::ofstream(d + "/config.json") << "{}";
  }
  std::ofstream(sharded + "/model.safetensors.index.json") << "{}";
  std::ofstream(single + "/model.safetensors") << "x";
  EXPECT_EQ(resolve_model("", {root + "/missing", no_weights, sharded, single}), sharded);
  EXPECT_EQ(resolve_model("", {single, sharded}), single);
}

TEST(DefaultModel, MissingNamesEveryPathAndTheRemedy) {
  const std::string root = test::temp_path("default_model_missing");
  fs::remove_all(root);
  fs::create_directories(root + "/empty");
  fs::create_directories(root + "/noweights");
  std::ofstream(root + "/noweights/config.json") << "{}";
  const std::string e = error_of("", {root + "/absent", root + "/empty", root + "/noweights"});
  EXPECT_NE(e.find("no --model given"), std::string::npos) << e;
  EXPECT_NE(e.find(root + "/absent: no such directory"), std::string::npos) << e;
  EXPECT_NE(e.find(root + "/empty: no config.json"), std::string::npos) << e;
  EXPECT_NE(e.find(root + "/noweights: no weights"), std::string::npos) << e;
  EXPECT_NE(e.find("Pass --model DIR"), std::string::npos) << e;
  EXPECT_NE(e.find("scripts/train/default_model.sh"), std::string::npos) << e;
}

TEST(DefaultModel, CandidatesAreTheWorkingDirectoryThenTheSourceTree) {
  EXPECT_EQ(default_model_candidates(""), std::vector<std::string>{"models/moe-tiny"});
  const auto c = default_model_candidates("/somewhere/else");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0], "models/moe-tiny");
  EXPECT_EQ(c[1], "/somewhere/else/models/moe-tiny");
  // the tests run from the repository root: the source tree is the working directory, listed once
  EXPECT_EQ(default_model_candidates(fs::current_path().string()).size(), 1u);
}

// `moe generate` without --model, run from a directory whose models/moe-tiny is a model (the random test model,
// linked): the same output as naming that model.
TEST(DefaultModel, GenerateWithoutModelLoadsModelsMoeTiny) {
  const std::string root = fs::absolute(test::temp_path("default_model_cli")).string();
  fs::remove_all(root);
  fs::create_directories(root + "/models");
  fs::create_directory_symlink(fs::absolute(test::kTinyModel), root + "/models/moe-tiny");
  const std::string args = " generate --tokens 311,811,1336,101 --max-new-tokens 5 --threads 1";
  const test::MoeResult named = test::run_moe(args + " --model " + std::string(test::kTinyModel), false);
  const test::MoeResult dflt = test::run_moe(args, false);  // from the repository root: models/moe-tiny
  const std::string cmd = "cd '" + root + "' && " + std::string(MOE_BINARY) + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  ASSERT_EQ(named.code, 0) << named.out;
  EXPECT_EQ(WEXITSTATUS(status), 0) << out;
  EXPECT_FALSE(named.out.empty());
  EXPECT_EQ(out, named.out);
  // From the repository root the committed models/moe-tiny is used: an error naming it while it has no weights.
  if (!fs::exists("models/moe-tiny/model.safetensors.index.json") && !fs::exists("models/moe-tiny/model.safetensors")) {
    EXPECT_NE(dflt.code, 0);
    const test::MoeResult e = test::run_moe(args);
    EXPECT_NE(e.out.find("models/moe-tiny: no weights"), std::string::npos) << e.out;
  } else {
    EXPECT_EQ(dflt.code, 0);
  }
}

}  // namespace
}  // namespace moe::cli

// `moe generate` with a checkpoint's generation_config.json: the file's sampling is the default, flags win,
// --generation-config none ignores it, and a malformed file is an error naming the file and the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "run_moe.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe::test {
namespace {

// The tiny fixture model's files, linked into a fresh directory with the given generation_config.json.
std::string model_with(const std::string& name, const std::string& generation_config) {
  const fs::path dir = fs::absolute(temp_path(name));
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(fs::absolute(kTinyModel)))
    fs::create_symlink(e.path(), dir / e.path().filename());
  std::ofstream(dir / "generation_config.json") << generation_config;
  return dir.string();
}

const std::string kArgs = " --tokens 311,811,1336,101 --max-new-tokens 12 --threads 1";

TEST(GenerationConfigCli, FileSamplingIsTheDefaultAndFlagsWin) {
  const std::string sampled = model_with("genconf_sampled", R"({"do_sample": true, "temperature": 1.5, "top_p": 1.0})");
  const std::string tiny = std::string(kTinyModel);
  const MoeResult from_file = run_moe("generate --model " + sampled + kArgs + " --seed 11", false);
  const MoeResult by_flags = run_moe("generate --model " + tiny + kArgs + " --seed 11 --temperature 1.5", false);
  const MoeResult greedy = run_moe("generate --model " + tiny + kArgs, false);
  ASSERT_EQ(from_file.code, 0) << from_file.out;
  ASSERT_EQ(by_flags.code, 0) << by_flags.out;
  ASSERT_EQ(greedy.code, 0) << greedy.out;
  EXPECT_EQ(from_file.out, by_flags.out);  // the file's temperature applied exactly as the flag would be
  // Temperature 1.5 over 12 tokens of a random model leaves greedy's path (checked for this seed).
  EXPECT_NE(from_file.out, greedy.out);
  const MoeResult flag_wins = run_moe("generate --model " + sampled + kArgs + " --temperature 0", false);
  const MoeResult none = run_moe("generate --model " + sampled + kArgs + " --generation-config none", false);
  EXPECT_EQ(flag_wins.out, greedy.out);
  EXPECT_EQ(none.out, greedy.out);
}

TEST(GenerationConfigCli, DoSampleFalseIsGreedy) {
  const std::string dir = model_with("genconf_greedy", R"({"do_sample": false, "temperature": 0.6})");
  const MoeResult r = run_moe("generate --model " + dir + kArgs, false);
  const MoeResult greedy = run_moe("generate --model " + std::string(kTinyModel) + kArgs, false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, greedy.out);
}

TEST(GenerationConfigCli, MalformedFileIsAnErrorNamingFileAndKey) {
  const std::string dir = model_with("genconf_bad", R"({"temperature": "warm"})");
  const MoeResult r = run_moe("generate --model " + dir + kArgs);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find(dir + "/generation_config.json: 'temperature' must be a number, not string"), std::string::npos)
      << r.out;
  EXPECT_EQ(run_moe("generate --model " + dir + kArgs + " --generation-config none").code, 0);
  const MoeResult bad_mode = run_moe("generate --model " + dir + kArgs + " --generation-config maybe");
  EXPECT_NE(bad_mode.code, 0);
  EXPECT_NE(bad_mode.out.find("--generation-config"), std::string::npos) << bad_mode.out;
}

}  // namespace
}  // namespace moe::test

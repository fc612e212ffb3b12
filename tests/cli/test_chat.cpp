// `moe chat` through a pipe: /save and /load (the conversation as JSON messages; a bad file is reported, naming
// the file and the problem, and the chat goes on), and Ctrl-C during a long reply (SIGINT to the child) stops
// the reply and keeps the conversation. The parser's error messages are checked directly too.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/conversation.h"
#include "core/error.h"
#include "run_moe.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const std::string& path) {
  std::ifstream f(path);
  return json::parse(f);
}

std::string parse_error(const std::string& text) {
  try {
    moe::cli::parse_conversation(text, "conv.json");
  } catch (const moe::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Chat, ConversationFilesAreCheckedWithClearErrors) {
  EXPECT_EQ(moe::cli::parse_conversation(R"([{"role":"user","content":"Hi"}])", "c").size(), 1u);
  EXPECT_NE(parse_error("[{").find("conv.json: not valid JSON"), std::string::npos);
  EXPECT_EQ(parse_error(R"({"role":"user"})"), "conv.json: expected a JSON array of messages, found object");
  EXPECT_EQ(parse_error("[3]"), "conv.json: message 0 is number, not an object");
  EXPECT_EQ(parse_error(R"([{"role":"user","content":"a"},{"content":"b"}])"), "conv.json: message 1 has no \"role\" string");
  EXPECT_EQ(parse_error(R"([{"role":"tool","content":"b"}])"),
            "conv.json: message 0 has role \"tool\"; expected system, user or assistant");
  EXPECT_EQ(parse_error(R"([{"role":"user","content":null}])"), "conv.json: message 0 has no \"content\" string");
  EXPECT_EQ(parse_error(std::string(200, '[') + std::string(200, ']')), "conv.json: JSON nested deeper than 128 levels");
  try {
    moe::cli::load_conversation("/nonexistent/c.json");
    ADD_FAILURE();
  } catch (const moe::Error& e) {
    EXPECT_EQ(std::string(e.what()), "/nonexistent/c.json: cannot open");
  }
}

TEST(Chat, SaveAndLoadThroughAPipe) {
  const std::string dir = moe::test::temp_path("chat-save");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/bad.json") << R"([{"role":"user","content":"x"},{"role":"tool","content":"y"}])";
  std::ofstream(dir + "/script.txt") << "Hi\n/save " << dir << "/a.json\n/load " << dir << "/missing.json\n/load " << dir
                                     << "/bad.json\n/save " << dir << "/after-bad.json\n/reset\n/load " << dir
                                     << "/a.json\nMore\n/save " << dir << "/c.json\n/save\n";
  const auto r = moe::test::run_moe("chat --model " + moe::test::kTinyModel + " --max-new-tokens 5 < " + dir + "/script.txt");
  ASSERT_EQ(r.code, 0) << r.out;
  const json a = read_json(dir + "/a.json");
  ASSERT_EQ(a.size(), 2u) << a.dump();
  EXPECT_EQ(a[0], (json{{"role", "user"}, {"content", "Hi"}}));
  EXPECT_EQ(a[1]["role"], "assistant");
  EXPECT_FALSE(a[1]["content"].get<std::string>().empty());
  // The failed loads left the conversation as it was, and said why, naming the file.
  EXPECT_EQ(read_json(dir + "/after-bad.json"), a);
  EXPECT_NE(r.out.find("(not loaded, the conversation is unchanged: " + dir + "/missing.json: cannot open)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(dir + "/bad.json: message 1 has role \"tool\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(not saved: /save needs a file name)"), std::string::npos) << r.out;
  // After /reset and /load the chat goes on from the loaded conversation.
  const json c = read_json(dir + "/c.json");
  ASSERT_EQ(c.size(), 4u) << c.dump();
  EXPECT_EQ(c[0], a[0]);
  EXPECT_EQ(c[1], a[1]);
  EXPECT_EQ(c[2], (json{{"role", "user"}, {"content", "More"}}));
  fs::remove_all(dir);
}

// Ctrl-C during a reply (a reply that would take minutes): the reply stops, the chat goes on and can save the
// conversation with the partial reply; the process ends normally at end of input.
TEST(Chat, InterruptStopsTheReplyAndKeepsTheConversation) {
  const std::string dir = moe::test::temp_path("chat-sigint");
  fs::remove_all(dir);
  fs::create_directories(dir);
  int in[2], out[2];
  ASSERT_EQ(pipe(in), 0);
  ASSERT_EQ(pipe(out), 0);
  const std::string err_path = dir + "/stderr.txt";
  const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(err_fd, 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err_fd, 2);
    close(in[1]);
    close(out[0]);
    execl(MOE_BINARY, MOE_BINARY, "chat", "--model", moe::test::kTinyModel.c_str(), "--context", "65536",
          "--max-new-tokens", "60000", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err_fd);
  const std::string hi = "Hi\n";
  ASSERT_EQ(write(in[1], hi.data(), hi.size()), ssize_t(hi.size()));
  // Wait for the reply to stream (some bytes on stdout), then interrupt it.
  char buf[256];
  const ssize_t n = read(out[0], buf, sizeof buf);
  ASSERT_GT(n, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(pid, SIGINT), 0);
  const std::string rest = "/save " + dir + "/s.json\n";
  ASSERT_EQ(write(in[1], rest.data(), rest.size()), ssize_t(rest.size()));
  close(in[1]);
  while (read(out[0], buf, sizeof buf) > 0) {
  }
  close(out[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ifstream ef(err_path);
  const std::string err((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << "ended by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 0) << err;
  EXPECT_LT(waited, 20.0) << "60000 tokens take minutes: the reply was not stopped";
  EXPECT_NE(err.find(", stopped]"), std::string::npos) << err;
  const json s = read_json(dir + "/s.json");
  ASSERT_EQ(s.size(), 2u) << s.dump();
  EXPECT_EQ(s[0]["content"], "Hi");
  EXPECT_EQ(s[1]["role"], "assistant");
  EXPECT_FALSE(s[1]["content"].get<std::string>().empty());
  fs::remove_all(dir);
}

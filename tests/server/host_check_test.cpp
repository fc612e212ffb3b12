// HostPolicy (src/server/host_check.h): which Host headers the server answers, for loopback and other binds.
#include "server/host_check.h"

#include <gtest/gtest.h>

using moe::server::HostPolicy;

namespace {
bool answered(const HostPolicy& p, const std::string& host, const std::string& path = "/v1/chat/completions") {
  return !p.refusal(host, path).has_value();
}
}  // namespace

TEST(HostPolicy, LoopbackBindAnswersLoopbackNamesAndListedHostsOnly) {
  HostPolicy p{"127.0.0.1", {}, false};
  for (const char* h : {"localhost", "LOCALHOST:8000", "app.localhost", "127.0.0.1:8000", "127.1.2.3", "[::1]:80"})
    EXPECT_TRUE(answered(p, h)) << h;
  for (const char* h : {"evil.example", "localhost.evil.example", "127.0.0.1.evil.example", "10.0.0.1", "[fe80::1]",
                        "127.0.0.1x", ""})
    EXPECT_FALSE(answered(p, h)) << h;
  // An API key does not open a loopback server to other names: nothing but a page could send one.
  EXPECT_FALSE(answered(HostPolicy{"127.0.0.1", {}, true}, "evil.example"));
  HostPolicy listed{"localhost", {"chat.example.com", "other.example:9000"}, false};
  EXPECT_TRUE(answered(listed, "chat.example.com:8000"));
  EXPECT_TRUE(answered(listed, "Other.Example"));
  EXPECT_FALSE(answered(listed, "sub.chat.example.com"));
  EXPECT_TRUE(answered(HostPolicy{"127.0.0.1", {"*"}, false}, "anything.example"));
  // The refusal names what to do.
  EXPECT_NE(p.refusal("evil.example", "/health")->find("--allowed-hosts"), std::string::npos);
}

TEST(HostPolicy, OtherBindsAnswerIpLiteralsTheirOwnNameAndAnyNameWithAKeyOnTheApi) {
  HostPolicy any{"0.0.0.0", {}, false};
  for (const char* h : {"192.168.1.20:8000", "10.0.0.1", "[2001:db8::1]:8000", "localhost:8000", "127.0.0.1"})
    EXPECT_TRUE(answered(any, h)) << h;
  for (const char* h : {"evil.example", "evil.example:8000", "192.168.1.20.evil.example", "[not-v6]", "300.1.1.1"})
    EXPECT_FALSE(answered(any, h)) << h;
  HostPolicy named{"box.lan", {}, false};
  EXPECT_TRUE(answered(named, "BOX.lan:8000"));
  EXPECT_FALSE(answered(named, "evil.example"));
  // With a key, any name reaches the API (the key guards it) but not the unauthenticated pages.
  HostPolicy keyed{"0.0.0.0", {}, true};
  EXPECT_TRUE(answered(keyed, "evil.example", "/v1/chat/completions"));
  EXPECT_TRUE(answered(keyed, "gpu-box.corp:8000", "/v1/models"));
  EXPECT_FALSE(answered(keyed, "evil.example", "/health"));
  EXPECT_FALSE(answered(keyed, "evil.example", "/"));
  const auto why = any.refusal("evil.example:8000", "/health");
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("'evil.example'"), std::string::npos) << *why;
}

#pragma once
// Ratings of answers (the chat page's thumbs up / down) in SQLite. WAL journal with synchronous=FULL: every commit
// fsyncs the WAL before add() returns, so an acknowledged rating survives kill -9 and power loss alike (NORMAL
// would survive a process crash but could lose the last commits on power loss). Thread-safe.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <mutex>
#include <ostream>
#include <string>

struct sqlite3;

namespace moe::server {

class FeedbackStore {
 public:
  explicit FeedbackStore(const std::string& path);  // creates the file and table if needed; throws moe::Error
  ~FeedbackStore();
  FeedbackStore(const FeedbackStore&) = delete;
  FeedbackStore& operator=(const FeedbackStore&) = delete;

  // Stores one rating; returns its row id once the transaction is committed.
  int64_t add(const nlohmann::json& conversation, const std::string& answer, int rating, const std::string& model,
              const std::string& comment);
  int64_t count();
  // JSONL: one {"type":"rating",...} line per row, then {"type":"pair","prompt","chosen","rejected"} lines for every
  // conversation rated both up and down: max(#up, #down) pairs, round-robin, so each rated answer is in one at
  // least. Returns the number of lines written.
  int64_t export_jsonl(std::ostream& out);

 private:
  void exec(const char* sql);
  std::mutex mu_;
  sqlite3* db_ = nullptr;
};

}  // namespace moe::server

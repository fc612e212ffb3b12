#include "server/feedback_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <map>
#include <vector>

#include "core/error.h"

namespace moe::server {

using nlohmann::json;

namespace {
struct Stmt {
  sqlite3_stmt* s = nullptr;
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) fail("feedback db: {}", sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s); }
};
std::string col(sqlite3_stmt* s, int i) {
  const auto* t = sqlite3_column_text(s, i);
  return t ? std::string(reinterpret_cast<const char*>(t), size_t(sqlite3_column_bytes(s, i))) : std::string();
}
}  // namespace

FeedbackStore::FeedbackStore(const std::string& path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("cannot open feedback database {}: {}", path, msg);
  }
  sqlite3_busy_timeout(db_, 5000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=FULL");
  exec("CREATE TABLE IF NOT EXISTS feedback ("
       " id INTEGER PRIMARY KEY AUTOINCREMENT,"
       " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
       " model TEXT NOT NULL,"
       " conversation TEXT NOT NULL,"
       " answer TEXT NOT NULL,"
       " rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),"
       " comment TEXT NOT NULL DEFAULT '')");
}

FeedbackStore::~FeedbackStore() { sqlite3_close(db_); }

void FeedbackStore::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    fail("feedback db: {}", msg);
  }
}

int64_t FeedbackStore::add(const json& conversation, const std::string& answer, int rating, const std::string& model,
                           const std::string& comment) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT INTO feedback (model, conversation, answer, rating, comment) VALUES (?, ?, ?, ?, ?)");
  const std::string conv = conversation.dump();
  sqlite3_bind_text(st.s, 1, model.c_str(), int(model.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(st.s, 2, conv.c_str(), int(conv.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(st.s, 3, answer.c_str(), int(answer.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(st.s, 4, rating);
  sqlite3_bind_text(st.s, 5, comment.c_str(), int(comment.size()), SQLITE_TRANSIENT);
  // Autocommit: sqlite3_step returns SQLITE_DONE only after the commit (and, with synchronous=FULL, the fsync).
  if (sqlite3_step(st.s) != SQLITE_DONE) fail("feedback db: {}", sqlite3_errmsg(db_));
  return sqlite3_last_insert_rowid(db_);
}

int64_t FeedbackStore::count() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT COUNT(*) FROM feedback");
  if (sqlite3_step(st.s) != SQLITE_ROW) fail("feedback db: {}", sqlite3_errmsg(db_));
  return sqlite3_column_int64(st.s, 0);
}

int64_t FeedbackStore::export_jsonl(std::ostream& out) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT id, created_at, model, conversation, answer, rating, comment FROM feedback ORDER BY id");
  struct Answers {
    json prompt;
    std::vector<std::string> up, down;
    std::string model;
  };
  std::map<std::string, Answers> by_prompt;
  std::vector<std::string> order;
  int64_t lines = 0;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    json conv = json::parse(col(st.s, 3), nullptr, false);
    const int rating = sqlite3_column_int(st.s, 5);
    json row = {{"type", "rating"},       {"id", sqlite3_column_int64(st.s, 0)}, {"created_at", col(st.s, 1)},
                {"model", col(st.s, 2)},  {"conversation", conv},              {"answer", col(st.s, 4)},
                {"rating", rating == 1 ? "up" : "down"}, {"comment", col(st.s, 6)}};
    out << row.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    ++lines;
    const std::string key = conv.dump();
    auto [it, fresh] = by_prompt.try_emplace(key);
    if (fresh) {
      order.push_back(key);
      it->second.prompt = conv;
      it->second.model = col(st.s, 2);
    }
    (rating == 1 ? it->second.up : it->second.down).push_back(col(st.s, 4));
  }
  if (rc != SQLITE_DONE) fail("feedback db: {}", sqlite3_errmsg(db_));
  for (const auto& key : order) {
    const Answers& a = by_prompt[key];
    // Every rated answer appears in at least one pair, without the up x down cross product: max(up, down) pairs,
    // round-robin.
    if (a.up.empty() || a.down.empty()) continue;
    const size_t n = std::max(a.up.size(), a.down.size());
    for (size_t i = 0; i < n; ++i) {
      const std::string& chosen = a.up[i % a.up.size()];
      const std::string& rejected = a.down[i % a.down.size()];
      if (chosen == rejected) continue;
      json pair = {{"type", "pair"}, {"model", a.model}, {"prompt", a.prompt}, {"chosen", chosen}, {"rejected", rejected}};
      out << pair.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      ++lines;
    }
  }
  return lines;
}

}  // namespace moe::server

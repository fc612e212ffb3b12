#include "core/thread_pool.h"

#include <algorithm>
#include <memory>

namespace moe {

namespace {
thread_local bool t_inside_pool_task = false;  // set while a thread runs a chunk of some parallel_for

struct InsideTask {
  bool saved = t_inside_pool_task;
  InsideTask() { t_inside_pool_task = true; }
  ~InsideTask() { t_inside_pool_task = saved; }
};
}  // namespace

ThreadPool::ThreadPool(int threads) {
  threads = std::max(1, threads);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    const bool has_task = index < job_tasks_;
    lock.unlock();
    if (has_task) run_chunks(index);
    lock.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

// Chunks are claimed from a shared counter, so a thread slowed down by the OS takes fewer of them.
void ThreadPool::run_chunks(int index) {
  InsideTask inside;
  for (;;) {
    const int64_t begin = next_.fetch_add(job_chunk_, std::memory_order_relaxed);
    if (begin >= job_n_) return;
    (*job_)(begin, std::min(job_n_, begin + job_chunk_), index);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_tasks = std::max<int64_t>(1, std::min<int64_t>(size(), (n + grain - 1) / grain));
  if (max_tasks == 1 || workers_.empty() || t_inside_pool_task) {
    fn(0, n, 0);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    job_chunk_ = std::max(grain, (n + 4 * max_tasks - 1) / (4 * max_tasks));  // ~4 chunks per thread
    job_tasks_ = int(max_tasks);
    next_.store(0, std::memory_order_relaxed);
    pending_ = int(workers_.size());
    ++generation_;
  }
  start_cv_.notify_all();
  run_chunks(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
}

namespace {
int g_requested_threads = 0;
}

void ThreadPool::set_global_threads(int threads) { g_requested_threads = threads; }

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(g_requested_threads > 0 ? g_requested_threads
                                                 : int(std::max(1u, std::thread::hardware_concurrency())));
  return pool;
}

}  // namespace moe

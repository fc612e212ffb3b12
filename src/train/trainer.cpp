#include "train/trainer.h"
#include "train/device_step.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "train/batch_schedule.h"
#include "train/data.h"
#include "dist/communicator.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace moe::train {

namespace {


void fsync_path(const std::string& path, bool dir = false) {
  const int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  MOE_CHECK(fd >= 0, "{}: cannot open to sync", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  MOE_CHECK(rc == 0, "{}: fsync failed", path);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  MOE_CHECK(out.good(), "{}: error writing", path);
}

TensorView f32_view(const float* data, Shape shape) {
  TensorView v;
  v.data = const_cast<float*>(data);
  v.dtype = DType::F32;
  v.shape = shape;
  return v;
}

json recipe_json(const TrainRecipe& r) {
  return {{"steps", r.steps},           {"seq_len", r.seq_len},       {"batch", r.batch},
          {"lr", r.lr},                 {"min_lr", r.min_lr},         {"warmup", r.warmup},
          {"decay_start", r.decay_start}, {"seed", r.seed},           {"val_every", r.val_every},
          {"val_batches", r.val_batches}, {"save_every", r.save_every}, {"clip_norm", r.clip_norm},
          {"weight_decay", r.weight_decay}, {"beta1", r.beta1},       {"beta2", r.beta2},
          {"adam_eps", r.adam_eps},     {"mtp_lambda", r.mtp_lambda}, {"seq_aux_alpha", r.seq_aux_alpha},
          {"bias_gamma", r.bias_gamma}, {"init_std", r.init_std},     {"save_dtype", r.save_dtype},
          {"micro_batch", r.micro_batch}, {"batch_ramp_start", r.batch_ramp_start},
          {"batch_ramp_tokens", r.batch_ramp_tokens}, {"moments", r.moments}};
}

TrainRecipe recipe_from(const nlohmann::json& j) {
  TrainRecipe r;
  auto i64 = [&](const char* k) { return j.at(k).get<int64_t>(); };
  auto f64 = [&](const char* k) { return j.at(k).get<double>(); };
  r.steps = i64("steps"), r.seq_len = i64("seq_len"), r.batch = i64("batch");
  r.lr = f64("lr"), r.min_lr = f64("min_lr"), r.warmup = i64("warmup"), r.decay_start = i64("decay_start");
  r.seed = j.at("seed").get<uint64_t>(), r.val_every = i64("val_every"), r.val_batches = i64("val_batches");
  r.save_every = i64("save_every"), r.clip_norm = f64("clip_norm"), r.weight_decay = f64("weight_decay");
  r.beta1 = f64("beta1"), r.beta2 = f64("beta2"), r.adam_eps = f64("adam_eps"), r.mtp_lambda = f64("mtp_lambda");
  r.seq_aux_alpha = f64("seq_aux_alpha"), r.bias_gamma = f64("bias_gamma"), r.init_std = f64("init_std");
  r.save_dtype = j.at("save_dtype").get<std::string>();
  // Absent from states written before accumulation and the ramp existed: those runs had neither.
  r.micro_batch = j.value("micro_batch", int64_t(0));
  r.batch_ramp_start = j.value("batch_ramp_start", int64_t(0));
  r.batch_ramp_tokens = j.value("batch_ramp_tokens", int64_t(0));
  r.moments = j.value("moments", std::string("f32"));  // states written before BF16 moments existed: F32
  return r;
}

BatchSchedule batch_schedule(const TrainRecipe& r) {
  BatchSchedule b;
  b.batch = r.batch, b.micro = r.micro_batch > 0 ? r.micro_batch : r.batch, b.seq_len = r.seq_len;
  b.ramp_start = r.batch_ramp_start, b.ramp_tokens = r.batch_ramp_tokens;
  return b;
}

void check_recipe(const TrainRecipe& r) {
  MOE_CHECK(r.steps >= 1, "train: --steps must be at least 1");
  MOE_CHECK(r.seq_len >= 3, "train: --seq-len must be at least 3 (the MTP objective needs t[j+2])");
  MOE_CHECK(r.micro_batch >= 0 && r.batch_ramp_start >= 0 && r.batch_ramp_tokens >= 0,
            "train: --micro-batch, --batch-ramp-start and --batch-ramp-tokens cannot be negative");
  batch_schedule(r).check();
  MOE_CHECK(std::isfinite(r.lr) && r.lr > 0, "train: --lr {} must be a positive number", r.lr);
  MOE_CHECK(std::isfinite(r.min_lr) && r.min_lr >= 0 && r.min_lr <= r.lr, "train: --min-lr must be in [0, lr]");
  MOE_CHECK(r.warmup >= 0 && r.warmup <= r.steps, "train: --warmup must be in [0, steps]");
  MOE_CHECK(r.val_every >= 0 && r.save_every >= 0 && r.val_batches >= 1, "train: bad --val-every/--save-every");
  MOE_CHECK(r.clip_norm > 0 && r.beta1 >= 0 && r.beta1 < 1 && r.beta2 >= 0 && r.beta2 < 1 && r.init_std > 0,
            "train: a hyper-parameter is out of range");
  MOE_CHECK(r.save_dtype == "f32" || r.save_dtype == "bf16", "train: --save-dtype is f32 or bf16, not {}",
            r.save_dtype);
  MOE_CHECK(r.moments == "f32" || r.moments == "bf16", "train: --moments is f32 or bf16, not {}", r.moments);
}

// The directory a checkpoint path names: DIR itself when it has train_state.json, else DIR/`latest`.
std::string resolve_checkpoint(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "train_state.json")) return dir;
  const fs::path latest = fs::path(dir) / "latest";
  MOE_CHECK(fs::exists(latest), "{}: not a training checkpoint (no train_state.json) nor a train --out directory "
            "(no latest)", dir);
  std::string name = read_file(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string path = (fs::path(dir) / name).string();
  MOE_CHECK(fs::exists(fs::path(path) / "train_state.json"), "{}: latest names {}, which has no train_state.json",
            dir, path);
  return path;
}

double max_violation(const std::vector<int64_t>& load) {
  double sum = 0, mx = 0;
  for (int64_t l : load) sum += double(l), mx = std::max(mx, double(l));
  return sum == 0 ? 0.0 : mx / (sum / double(load.size())) - 1.0;
}

// "model.layers.L.mlp.gate.weight" -> "L": the key of a layer's entry in the JSON lines' maxvio objects.
std::string layer_key(const std::string& gate) {
  const size_t a = gate.find("layers.") + 7, b = gate.find('.', a);
  return gate.substr(a, b - a);
}

}  // namespace

void write_hub_checkpoint(const TrainModel& model, const std::string& config_json, const std::string& tokenizer_dir,
                          const std::string& dir, const std::string& dtype) {
  fs::create_directories(dir);
  write_text(dir + "/config.json", config_json);
  std::vector<std::vector<uint16_t>> bf16;
  bf16.reserve(model.params.size());
  std::vector<NamedTensor> out;
  for (const auto& p : model.params) {
    // The MTP module's shared embed_tokens / shared_head.head are the main model's (as DeepSeek's checkpoints
    // hold them twice, the loader reads them from either place, so only the main copies are written).
    if (dtype == "bf16") {
      bf16.emplace_back(p->w.size());
      for (size_t i = 0; i < p->w.size(); ++i) bf16.back()[i] = float_to_bf16(p->w[i]);
      TensorView v;
      v.data = bf16.back().data();
      v.dtype = DType::BF16;
      v.shape = p->shape;
      out.push_back({p->name, v});
    } else {
      out.push_back({p->name, f32_view(p->w.data(), p->shape)});
    }
  }
  for (const auto& b : model.biases) out.push_back({b->name, f32_view(b->value.data(), {int64_t(b->value.size())})});
  write_safetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(tokenizer_dir) / name;
    if (!tokenizer_dir.empty() && fs::exists(src))
      fs::copy_file(src, fs::path(dir) / name, fs::copy_options::overwrite_existing);
  }
}

void run_training(TrainRun run, const std::function<void(const std::string&)>& out_all) {
  // Rank 0 speaks for the job.
  const bool speaker = !run.comm || run.comm->rank() == 0;
  auto out = [&](const std::string& line) {
    if (speaker) out_all(line);
  };
  // --- where the run starts: a checkpoint to resume, a hub checkpoint, or a config.json ---
  TrainModel model;
  std::string config_json;
  int64_t start_step = 0;
  PackedLoader::Position position;
  std::string last_good;  // the newest checkpoint on disk
  std::string data_checksum;  // of the data's manifest.json, as the checkpoint recorded it
  if (!run.resume_dir.empty()) {
    const std::string ck = resolve_checkpoint(run.resume_dir);
    const std::string state_path = ck + "/train_state.json";
    nlohmann::json st;
    try {
      st = nlohmann::json::parse(read_file(state_path));
      const int64_t steps_flag = run.recipe.steps;
      run.recipe = recipe_from(st.at("recipe"));
      for (const std::string& flag : run.recipe_flags_given) {
        MOE_CHECK(flag == "--steps", "train: {} cannot change on --resume: the recipe is {}'s", flag, state_path);
        run.recipe.steps = steps_flag;
      }
      data_checksum = st.at("data_manifest_fnv1a64").get<std::string>();
      start_step = st.at("step").get<int64_t>();
      const auto& l = st.at("loader");
      position = {l.at("epoch").get<int64_t>(), l.at("doc").get<int64_t>(), l.at("offset").get<int64_t>()};
      if (run.data_dir.empty()) run.data_dir = st.at("data").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not a valid training state: {}", state_path, e.what());
    }
    if (run.out_dir.empty()) run.out_dir = fs::path(ck).parent_path().string();
    model = TrainModel::load(ck);
    config_json = read_file(ck + "/config.json");
    SafetensorsFile opt(ck + "/optimizer.safetensors");
    auto get = [&](const std::string& name, std::vector<float>& dst) {
      const SafetensorsEntry* e = opt.find(name);
      MOE_CHECK(e && e->dtype == DType::F32 && opt.view(*e).numel() == int64_t(dst.size()),
                "{}: missing or misshapen F32 tensor {}", opt.path(), name);
      const TensorView v = opt.view(*e);
      std::copy(v.as<const float>(), v.as<const float>() + v.numel(), dst.begin());
    };
    for (auto& p : model.params) {
      get("m." + p->name, p->m);
      get("v." + p->name, p->v);
      if (opt.find("master." + p->name)) get("master." + p->name, p->w);
    }
    last_good = ck;
  } else {
    MOE_CHECK(run.config_path.empty() != run.init_dir.empty(), "train: give one of --config, --init or --resume");
    MOE_CHECK(!run.out_dir.empty(), "train: --out is required");
    MOE_CHECK(!fs::exists(fs::path(run.out_dir) / "latest"),
              "{}: already holds a run (latest); continue it with --resume {} or choose another --out", run.out_dir,
              run.out_dir);
    if (!run.init_dir.empty()) {
      model = TrainModel::load(run.init_dir);
      config_json = read_file(run.init_dir + "/config.json");
    } else {
      nlohmann::json cfg;
      try {
        cfg = nlohmann::json::parse(read_file(run.config_path));
      } catch (const nlohmann::json::exception& e) {
        fail("{}: not valid JSON: {}", run.config_path, e.what());
      }
      cfg.erase("quantization_config");
      config_json = cfg.dump(2) + "\n";
      // On a device the host keeps only the values until a checkpoint pulls the rest (a 10 B model's gradients
      // and moments would not fit in the host's memory).
      model = TrainModel::init(ModelConfig::from_json(cfg, run.config_path), run.config_path, run.recipe.seed,
                               run.recipe.init_std, nullptr, /*host_state=*/run.device == nullptr);
    }
  }
  const TrainRecipe& R = run.recipe;
  check_recipe(R);
  ThreadPool pool(run.threads > 0 ? run.threads : int(std::max(1u, std::thread::hardware_concurrency())));
  model.pool = &pool;
  model.device = run.device;  // bound (uploaded) at its first step, after a resume has loaded the state
  if (model.device) model.device->set_bf16_moments(R.moments == "bf16");
  MOE_CHECK(!run.data_dir.empty(), "train: --data is required");
  std::optional<DistributedTraining> dist;
  if (run.comm) {
    dist.emplace(model, *run.comm, run.parallel);
    const int64_t micro_batch = batch_schedule(R).micro;
    MOE_CHECK(micro_batch % run.comm->size() == 0, "train: the micro-batch of {} sequences (--micro-batch, or --batch) "
              "does not split over {} data-parallel ranks", micro_batch, run.comm->size());
  }

  // --- data ---
  const Manifest manifest = Manifest::load(run.data_dir);
  const std::string manifest_path = run.data_dir + "/manifest.json";
  const std::string manifest_sum = fmt::format("{:016x}", [&] {
    const std::string text = read_file(manifest_path);
    return fnv1a64(text.data(), text.size());
  }());
  MOE_CHECK(data_checksum.empty() || data_checksum == manifest_sum,
            "{}: the data changed since the checkpoint was written (manifest checksum {} there, {} now); resuming "
            "would not continue the same stream", manifest_path, data_checksum, manifest_sum);
  MOE_CHECK(manifest.vocab_size <= model.config.vocab_size,
            "{}/manifest.json: the tokenizer's vocabulary ({}) is larger than the model's vocab_size ({})",
            run.data_dir, manifest.vocab_size, model.config.vocab_size);
  // SFT data (manifest "sft"): every sequence comes with its loss mask, 1 on the assistant turns' tokens.
  std::vector<std::vector<uint8_t>> train_masks, val_masks;
  PackedLoader loader(manifest.read_split("train", manifest.sft ? &train_masks : nullptr), R.seed, true, position);
  if (manifest.sft) loader.set_masks(std::move(train_masks));
  std::vector<std::vector<int32_t>> val_docs =
      manifest.val.empty() ? std::vector<std::vector<int32_t>>{}
                           : manifest.read_split("val", manifest.sft ? &val_masks : nullptr);

  if (R.val_every > 0 && val_docs.empty())
    std::fprintf(stderr, "moe: note: %s/manifest.json has no validation shards; --val-every does nothing\n",
                 run.data_dir.c_str());
  const Objective obj{R.mtp_lambda, R.seq_aux_alpha};
  const AdamW adamw{R.beta1, R.beta2, R.adam_eps, R.weight_decay, R.moments == "bf16"};
  LrSchedule sched;
  sched.lr = R.lr, sched.min_lr = R.min_lr, sched.warmup_steps = R.warmup;
  sched.decay_start = R.decay_start < 0 ? R.warmup : R.decay_start;
  sched.decay_end = R.steps;

  fs::create_directories(run.out_dir);
  auto save = [&](int64_t step) {
    if (dist) {
      dist->gather_model();  // experts from their owners, ZeRO moments from their shards
      if (!speaker) {
        run.comm->barrier();  // rank 0 writes; the others wait so that no rank runs ahead of the checkpoint
        return;
      }
    }
    if (model.device) model.device->pull(model);  // values and moments, as the checkpoint holds them
    const std::string name = fmt::format("step-{:08d}", step);
    const std::string final_dir = (fs::path(run.out_dir) / name).string();
    const std::string tmp = (fs::path(run.out_dir) / (".tmp-" + name)).string();
    fs::remove_all(tmp);
    write_hub_checkpoint(model, config_json, run.data_dir, tmp, R.save_dtype);
    std::vector<NamedTensor> opt;
    for (const auto& p : model.params) {
      opt.push_back({"m." + p->name, f32_view(p->m.data(), p->shape)});
      opt.push_back({"v." + p->name, f32_view(p->v.data(), p->shape)});
      if (R.save_dtype != "f32") opt.push_back({"master." + p->name, f32_view(p->w.data(), p->shape)});
    }
    if (step == run.fault_crash_save) ::_exit(3);  // the model file is written, the rest is not
    write_safetensors(tmp + "/optimizer.safetensors", opt);
    const auto& pos = loader.position();
    json st = {{"format", "moe-train-state-1"},
               {"step", step},
               {"loader", {{"epoch", pos.epoch}, {"doc", pos.doc}, {"offset", pos.offset}}},
               {"rng", {{"seed", R.seed}, {"note", "data order is drawn from (seed, epoch); nothing else is random"}}},
               {"data", run.data_dir},
               {"data_manifest_fnv1a64", manifest_sum},
               {"recipe", recipe_json(R)}};
    write_text(tmp + "/train_state.json", st.dump(1) + "\n");
    for (const auto& f : fs::directory_iterator(tmp)) fsync_path(f.path().string());
    fsync_path(tmp, true);
    if (fs::exists(final_dir)) {
      // Replacing a checkpoint of this step (a resume from an earlier one): swap the two directories atomically,
      // so a crash leaves one complete checkpoint under the name, then remove the old one.
      MOE_CHECK(::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0,
                "{}: cannot replace it with {}: {}", final_dir, tmp, std::strerror(errno));
      fs::remove_all(tmp);
    } else {
      fs::rename(tmp, final_dir);
    }
    const std::string latest_tmp = run.out_dir + "/.latest.tmp";
    write_text(latest_tmp, name + "\n");
    fsync_path(latest_tmp);
    fs::rename(latest_tmp, run.out_dir + "/latest");
    fsync_path(run.out_dir, true);
    last_good = final_dir;
    out(json{{"checkpoint", final_dir}, {"step", step}}.dump());
    if (dist) run.comm->barrier();
  };

  const BatchSchedule batches = batch_schedule(R);
  const int64_t micro = batches.micro;
  auto validate = [&](int64_t step) {
    if (val_docs.empty()) return;
    PackedLoader vl(val_docs, 0, false);
    if (manifest.sft) vl.set_masks(val_masks);
    LossParts sum;
    std::vector<uint8_t> mask;
    // Expert balance on the held-out batches too (single process): loads summed over all of them (val_maxvio)
    // and the mean of each batch's MaxVio (val_maxvio_batch), per MoE layer as in the step lines. A device's
    // forward alone reports no loads, so there (with --val-maxvio) the batch runs through its forward_backward:
    // the same forward, and the gradients it adds are dead (validation follows the step's update; they are
    // zeroed below and again before the next step).
    const bool balance = !dist && (!model.device || run.device_val_maxvio);
    ExpertLoads total;
    std::map<std::string, double> batch_maxvio;
    for (int64_t i = 0; i < R.val_batches; ++i) {
      const std::vector<int32_t> ids = vl.next(micro, R.seq_len, manifest.sft ? &mask : nullptr);
      ExpertLoads part;
      const std::vector<uint8_t>* m = manifest.sft ? &mask : nullptr;
      const LossParts p = !balance       ? forward_loss(model, ids, micro, R.seq_len, obj, m)
                          : model.device ? forward_backward(model, ids, micro, R.seq_len, obj, &part, m)
                                         : forward_loss(model, ids, micro, R.seq_len, obj, m, &part);
      sum.loss += p.loss, sum.main_ce += p.main_ce, sum.mtp_ce += p.mtp_ce;
      for (const auto& [gate, load] : part) batch_maxvio[gate] += max_violation(load);
      add_loads(total, part);
    }
    if (balance && model.device) model.zero_grad();
    const double n = double(R.val_batches);
    json line{{"step", step}, {"val_loss", sum.loss / n}, {"val_main_ce", sum.main_ce / n}, {"val_mtp_ce", sum.mtp_ce / n}};
    if (balance && !total.empty()) {
      json global = json::object(), per_batch = json::object();
      for (const auto& [gate, load] : total) global[layer_key(gate)] = max_violation(load);
      for (const auto& [gate, v] : batch_maxvio) per_batch[layer_key(gate)] = v / n;
      line["val_maxvio"] = global, line["val_maxvio_batch"] = per_batch;
    }
    out(line.dump());
  };

  const int64_t end = run.stop_after > 0 ? std::min(run.stop_after, R.steps) : R.steps;
  int64_t consumed = batches.tokens_after(start_step);  // training tokens before this run's first step
  for (int64_t step = start_step + 1; step <= end; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    if (step == run.fault_nan_step) {
      MOE_CHECK(!model.final_norm->w.empty(), "train: --fault-nan-step needs the weights in place (not --zero 3)");
      if (model.device) model.device->pull(model);
      model.final_norm->w[0] = std::numeric_limits<float>::quiet_NaN();
      if (model.device) model.device->push(model);
    }
    // One optimiser step over `batch` sequences: k micro-batches, each forward_backward adding the gradient of
    // its mean loss; the sum / k is the whole batch's gradient (the micro-batches are equal, and the balance
    // loss is a mean over sequences). Loads are counts: they add up.
    const int64_t batch = batches.at(consumed), k = batch / micro;
    model.zero_grad();
    ExpertLoads loads;
    LossParts parts;
    std::vector<uint8_t> mask;
    for (int64_t i = 0; i < k; ++i) {
      ExpertLoads part_loads;
      const std::vector<int32_t> ids = loader.next(micro, R.seq_len, manifest.sft ? &mask : nullptr);
      if (dist && i == k - 1) dist->before_last_pass();  // GPUs: the gradients travel during its backward
      const LossParts p =
          dist ? dist->local_pass(ids, micro, R.seq_len, obj, &part_loads, manifest.sft ? &mask : nullptr)
               : forward_backward(model, ids, micro, R.seq_len, obj, &part_loads, manifest.sft ? &mask : nullptr);
      parts.loss += p.loss / double(k), parts.main_ce += p.main_ce / double(k);
      parts.mtp_ce += p.mtp_ce / double(k), parts.seq_aux += p.seq_aux / double(k);
      add_loads(loads, part_loads);
    }
    if (k > 1) {
      scale_gradients(model, 1.0 / double(k));
      if (dist) dist->scale_sharded_gradients(1.0 / double(k));  // ZeRO-3 reduced them into its shards already
    }
    if (dist) parts = dist->reduce(parts, &loads);
    consumed += batch * R.seq_len;
    if (!std::isfinite(parts.loss))
      fail("train: the loss is {} at step {}; stopped without updating. The last good checkpoint is {}", parts.loss,
           step, last_good.empty() ? std::string("none (no checkpoint was written yet)") : last_good);
    StepStats stats;
    try {
      // throws on a non-finite gradient norm
      stats = dist ? dist->step(adamw, sched.at(step), R.clip_norm, step)
                   : adamw_step(model, adamw, sched.at(step), R.clip_norm, step);
    } catch (const Error& e) {
      fail("{}; stopped without updating. The last good checkpoint is {}", e.what(),
           last_good.empty() ? std::string("none (no checkpoint was written yet)") : last_good);
    }
    update_correction_biases(model, loads, R.bias_gamma);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json maxvio = json::object();
    for (const auto& [gate, load] : loads) maxvio[layer_key(gate)] = max_violation(load);
    json line{{"step", step},
             {"loss", parts.loss},
             {"main_ce", parts.main_ce},
             {"mtp_ce", parts.mtp_ce},
             {"seq_aux", parts.seq_aux},
             {"grad_norm", stats.grad_norm},
             {"clip_scale", stats.clip_scale},
             {"lr", stats.lr},
             {"batch", batch},
             {"tokens", consumed},
             {"tokens_per_s", double(batch * R.seq_len) / std::max(secs, 1e-9)},
             {"maxvio", maxvio}};
    if (dist && run.parallel.ep) {
      // Expert parallelism's all-to-all traffic this step, summed over ranks (dispatch and combine, both passes).
      std::vector<double> sent = {double(dist->ep_stats().bytes_sent)};
      run.comm->all_reduce_sum(std::span<double>(sent));
      line["ep_bytes"] = int64_t(sent[0]);
      const std::vector<double> mine = {double(dist->ep_stats().max_ranks_per_token)};
      std::vector<double> all(size_t(run.comm->size()));
      run.comm->all_gather(std::span<const double>(mine), std::span<double>(all));
      line["ep_max_ranks_per_token"] = int64_t(*std::max_element(all.begin(), all.end()));
      dist->reset_ep_stats();
    }
    out(line.dump());
    if (R.val_every > 0 && step % R.val_every == 0) validate(step);
    if ((R.save_every > 0 && step % R.save_every == 0) || step == end) save(step);
  }
}

}  // namespace moe::train

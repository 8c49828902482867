#include "slearn/trainer.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "slearn/backend.hpp"
#include "slearn/checkpoint.hpp"
#include "slearn/error.hpp"
#include "slearn/input_check.hpp"
#include "slearn/lora.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model.hpp"
#include "slearn/stop.hpp"
#include "slearn/threads.hpp"
#include "train/adapter_shard.hpp"
#include "train/lora_graph.hpp"
#include "train/flat_adapter.hpp"
#include "train/optimizer.hpp"
#include "util/atomic_file.hpp"
#include "util/run_dir.hpp"
#include "util/terminal.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<std::size_t> epoch_order(std::size_t count, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::size_t> order(count);
  for (std::size_t i = 0; i < count; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(epoch) + 1);
  for (std::size_t i = count; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  return order;
}

std::uint64_t dropout_key(std::uint64_t seed, std::int64_t step, std::size_t micro) {
  std::uint64_t z = seed ^ (static_cast<std::uint64_t>(step) << 20) ^ micro;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  return z ^ (z >> 27);
}

// The settings that shape the trained weights; logging and checkpoint cadence are left out.
std::string shaping_settings(const TrainConfig& c) {
  std::ostringstream out;
  const auto& l = c.lora;
  const auto& o = c.optimizer;
  const auto& t = c.train;
  const auto& d = c.data;
  out << "lora " << l.r << ' ' << l.alpha << ' ' << l.dropout << ' ' << l.use_rslora;
  for (const auto& m : l.target_modules) out << ' ' << m;
  out << "\noptimizer " << o.learning_rate << ' ' << o.weight_decay << ' ' << o.adam_beta1 << ' ' << o.adam_beta2
      << ' ' << o.adam_epsilon << ' ' << o.max_grad_norm << ' ' << o.lr_schedule << ' ' << o.warmup_ratio << ' '
      << o.warmup_steps << "\ntrain " << t.epochs << ' ' << t.global_batch_size << ' ' << t.seed << ' '
      << t.max_steps << "\ndata " << d.question_field << ' ' << d.answer_field << ' ' << d.system_prompt << ' '
      << d.chat_format << ' ' << d.max_length << ' ' << d.train_on_prompt << '\n';
  return out.str();
}

// metrics.jsonl keeps the lines of steps <= `step` (those a resumed run will not redo), atomically. Returns
// how many of the kept lines are skipped steps (nan_policy skip_step), so the count spans resumed runs. Each
// line is written (and flushed) before the checkpoint of its step, so the kept lines are steps 1..step, each
// once; anything else is a damaged file that no resume can mend (those steps are not trained again): refused.
std::int64_t truncate_metrics(const fs::path& path, std::int64_t step, const fs::path& checkpoint_dir) {
  std::ifstream in(path);
  std::ostringstream kept;
  std::int64_t skipped = 0, expected = 1;
  std::string problem;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    const bool ok = record.is_object() && record.contains("step") && record["step"].is_number_integer();
    if (!ok) {
      if (in.peek() != std::char_traits<char>::eof() && problem.empty()) problem = "a line that is not a metrics record";
      continue;  // a torn last line from a crash: dropped
    }
    const auto at = record["step"].get<std::int64_t>();
    if (at > step) continue;
    if (at != expected && problem.empty()) problem = "step " + std::to_string(expected) + " missing or out of order";
    expected = at + 1;
    kept << line << '\n';
    const auto skip = record.find("skipped");
    skipped += skip != record.end() && skip->is_boolean() && skip->get<bool>() ? 1 : 0;
  }
  if (problem.empty() && expected != step + 1)
    problem = "it ends at step " + std::to_string(expected - 1) + " but the checkpoint is at step " + std::to_string(step);
  if (!problem.empty())
    throw InputError(path.string() + ": damaged (" + problem + "): the steps up to the checkpoint cannot be logged "
                     "again without training them again; delete " + checkpoint_dir.string() +
                     " to retrain from the start, or pass --force");
  write_file_atomically(path, kept.str());
  return skipped;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds);
  char buffer[32];
  if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(buffer, sizeof buffer, "%ldm%02lds", s / 60, s % 60);
  return buffer;
}

// train.micro_batch_size: the number given, or with auto as many examples of the longest length as fit in
// memory_fraction of the memory this backend has left (weights, adapter state and gradient sum are already
// allocated), at most a rank's share of the global batch. The micro-batches deal the global batch the same
// way on every rank (and the ranks of a tensor group run them together), so every rank of the world takes
// the smallest rank's choice.
std::int64_t choose_micro_batch_size(const TrainSettings& tc, const std::vector<TrainingExample>& examples,
                                     const LoraTrainingGraph& graph, Backend& backend, Communicator& world,
                                     Communicator& data, bool report) {
  if (tc.micro_batch_size != "auto") return std::stoll(tc.micro_batch_size);  // checked by the schema
  std::size_t longest = 1;
  for (const auto& e : examples) longest = std::max(longest, e.tokens.size());
  const double per_example = static_cast<double>(graph.activation_bytes_per_token()) * static_cast<double>(longest);
  const double free_bytes = static_cast<double>(backend.free_memory_bytes());
  const std::int64_t share = (tc.global_batch_size + data.size() - 1) / data.size();
  const auto fit = static_cast<std::int64_t>(std::floor(tc.memory_fraction * free_bytes / per_example));
  const std::int64_t mine = std::clamp<std::int64_t>(fit, 1, share);
  const std::int64_t mine_values[] = {mine};
  const std::vector<std::int64_t> all = world.allgather(mine_values);
  const std::int64_t chosen = *std::min_element(all.begin(), all.end());
  if (report)
    std::fprintf(stderr, "slearn_dist train: micro_batch_size auto: %lld (%.1f MiB of activations per example of "
                 "%zu tokens, %.2f GiB free on rank 0, memory_fraction %.2f)%s\n",
                 static_cast<long long>(chosen), per_example / (1 << 20), longest, free_bytes / (1 << 30),
                 tc.memory_fraction, fit < 1 ? "; even one example may not fit: consider gradient_checkpointing" : "");
  return chosen;
}

}  // namespace

TrainResult train_lora_on_examples(Model& model, const std::vector<TrainingExample>& examples,
                                   const std::string& data_fingerprint, const TrainConfig& config,
                                   Communicator& comm, const TrainRunOptions& options) {
  return train_lora_on_examples(model, examples, data_fingerprint, config, comm, comm, options);
}

// Tensor parallelism in the trainer: the ranks of a tensor group run the same micro-batches on their shards
// of the model and of the adapter (train/adapter_shard.hpp), so they must take every decision together:
// whether to stop inside a step (agreed over the group per micro-batch), the micro-batch size (the smallest
// over the world), the norm and the non-finite check (summed over the group). The adapter is made whole on
// the host (initialised or read, the same on every rank) and sliced, so a sharded run starts from the same
// values as a whole one; checkpoints and the saved adapter are whole again (gathered on the leader's group).
TrainResult train_lora_on_examples(Model& model, const std::vector<TrainingExample>& examples,
                                   const std::string& data_fingerprint, const TrainConfig& config,
                                   Communicator& world, Communicator& comm, const TrainRunOptions& options) {
  if (examples.empty()) throw InputError("no training examples (every record was empty or dropped)");
  const TensorParallel& tp = model.tensor_parallel();
  const bool sharded = tp.size > 1;
  if (world.size() != tp.size * comm.size())
    throw Error("train: a world of " + std::to_string(world.size()) + " ranks is not " + std::to_string(tp.size) +
                " (tensor) x " + std::to_string(comm.size()) + " (data)");
  const fs::path run_dir(config.run_dir);
  const fs::path checkpoint_dir = run_dir / "checkpoints";
  const fs::path metrics_path = run_dir / "metrics.jsonl";
  const bool leader = world.rank() == 0;
  // The ranks whose gathers make the whole adapter the leader writes: the leader's tensor group.
  const bool leader_group = comm.rank() == 0;
  const auto& tc = config.train;
  // The tokenizer shapes the examples, so it counts as part of the model.
  const std::string model_fingerprint =
      fingerprint_text(fingerprint_model(config.model) + fingerprint_tokenizer(config.model));
  const std::string fingerprint = "model:" + model_fingerprint + " data:" + data_fingerprint +
                                  " config:" + fingerprint_text(shaping_settings(config) + options.initial_adapter);

  Backend& backend = model.backend();
  // The adapter is made in fp32 on the host (initialised or read), then moved onto the model's backend as the
  // trainer's flat state: an fp32 master, the copy the matmuls read, AdamW's moments (train/flat_adapter.hpp).
  const auto host = make_cpu_backend();
  LoraAdapter whole = options.initial_adapter.empty()
                          ? LoraAdapter::initialize(model.config(), config.lora, tc.seed, *host)
                          : LoraAdapter::load(options.initial_adapter, model.config(), *host);
  std::optional<AdapterSharding> sharding;
  std::unique_ptr<Communicator> kv_group;
  if (sharded) {
    sharding.emplace(model.config(), whole, tp.size, tp.rank);
    kv_group = sharding->make_kv_group(*tp.group);
  }
  LoraAdapter adapter = sharded ? sharding->slice(whole, model.local_config()) : std::move(whole);
  AdapterTrainingState state(backend, adapter);
  const FlatLayout& layout = state.layout();
  LoraTrainingGraph graph(model, adapter, tc.gradient_checkpointing);
  const std::unique_ptr<GradientSum> gradient_sum =
      backend.make_gradient_sum(comm, layout.elements(), GradientSumOptions{});
  std::vector<Tensor> gradients = layout.views(gradient_sum->gradients(), "grad.");
  const std::int64_t micro =
      choose_micro_batch_size(tc, examples, graph, backend, world, comm, leader && options.show_progress);
  // A flat buffer of this rank's layout as whole arrays (PEFT keys and shapes): gathered over the tensor group
  // when sharded (collective on the group; only the leader's group needs it).
  auto whole_arrays = [&](const Tensor& flat) {
    if (!sharded) return state.to_arrays(flat);
    return sharding->gather_arrays(state.host_values(flat), *tp.group);
  };

  const auto count = static_cast<std::int64_t>(examples.size());
  const std::int64_t epoch_steps = steps_per_epoch(count, tc.global_batch_size);
  const std::int64_t total_steps = training_steps(tc, count, config.run_dir);

  TrainResult result;
  result.total_steps = total_steps;
  std::int64_t step = 0;
  std::optional<TrainState> restored;
  // Every rank reads the same checkpoint and the leader the metrics: a damaged one is refused once, by all
  // ranks together (one line for the job), never on some ranks only.
  check_on_all_ranks(world, [&] {
    if (!options.force) restored = load_latest_checkpoint(checkpoint_dir, fingerprint);
    if (restored) {
      // Whole arrays: each rank of a tensor group takes its share, whatever T wrote them (resharded).
      auto local = [&](const std::vector<NamedArray>& arrays) { return sharded ? sharding->slice_arrays(arrays) : arrays; };
      state.from_arrays(local(restored->adapter), state.master(), "adapter");
      state.from_arrays(local(restored->adam_m), state.first_moments(), "adam_m");
      state.from_arrays(local(restored->adam_v), state.second_moments(), "adam_v");
      if (leader && options.show_progress && restored->tensor_parallel != tp.size)
        std::fprintf(stderr, "slearn_dist train: resuming a checkpoint written at tensor parallelism %lld with %d: "
                     "the adapter and moments are resharded\n", static_cast<long long>(restored->tensor_parallel),
                     tp.size);
      state.refresh_compute_copy();
      step = restored->step;
      result.resumed_from = step;
    }
    if (leader) {
      fs::create_directories(run_dir);
      if (restored) result.skipped_steps = truncate_metrics(metrics_path, step, checkpoint_dir);
      else if (fs::exists(metrics_path)) fs::remove(metrics_path);
      write_file_atomically(run_dir / "train_config.yaml", config.source_text);
    }
  });

  auto save = [&](std::int64_t done) {
    // A checkpoint is what a resumed run trusts: one holding a NaN would poison every run after it. Every rank
    // of a data group holds the same parameters and moments, and the ranks of a tensor group agree on what
    // their shards hold, so every rank checks and all of them stop alike.
    for (Tensor* flat : {&state.master(), &state.first_moments(), &state.second_moments()}) {
      const std::int64_t bad = backend.check_flat(*flat, layout.segment_ends()).first_non_finite;
      if (!(sharded ? tp.group->any(bad >= 0) : bad >= 0)) continue;
      mark_failure_agreed();
      if (!leader) throw ReportedByAnotherRank(0, 1);
      throw Error("training step " + std::to_string(done) + ": " +
                  (bad >= 0 ? layout.describe(bad) : std::string("a parameter on another tensor-parallel rank")) +
                  (flat == &state.master() ? "" : " of AdamW's " + flat->name()) +
                  " is not finite; no checkpoint written, the last good one is kept");
    }
    if (!leader_group) return;
    TrainState checkpoint;
    checkpoint.step = done;
    checkpoint.epoch = done / epoch_steps;
    checkpoint.position = (done % epoch_steps) * tc.global_batch_size;
    checkpoint.adapter = whole_arrays(state.master());
    checkpoint.adam_m = whole_arrays(state.first_moments());
    checkpoint.adam_v = whole_arrays(state.second_moments());
    if (!leader) return;
    checkpoint.tensor_parallel = tp.size;
    checkpoint.data_parallel = comm.size();
    checkpoint.rng_state = "counter-based: seed " + std::to_string(tc.seed) + ", step " + std::to_string(done);
    checkpoint.config_yaml = config.source_text;
    checkpoint.fingerprint = fingerprint;
    save_checkpoint(checkpoint_dir, checkpoint, config.checkpoint.keep_last);
  };

  std::ofstream metrics;
  if (leader) metrics.open(metrics_path, std::ios::app);
  const bool terminal = options.show_progress && leader && writes_to_terminal(STDERR_FILENO);
  const auto start = Clock::now();
  std::int64_t tokens_done = 0;
  // Saved before a stop (on request or for a non-finite value): the steps done, unless a checkpoint of them
  // is already what we resumed from.
  auto save_progress = [&] {
    if (step > result.resumed_from || !restored) save(step);
  };
  std::vector<std::size_t> order;
  std::int64_t order_epoch = -1;
  while (step < total_steps) {
    if (options.stop_at_step && step >= *options.stop_at_step) break;
    const std::int64_t epoch = step / epoch_steps;
    if (epoch != order_epoch) {
      order = epoch_order(examples.size(), tc.seed, epoch);
      order_epoch = epoch;
    }
    const std::int64_t begin = (step % epoch_steps) * tc.global_batch_size;
    const std::int64_t end = std::min(count, begin + tc.global_batch_size);
    std::int64_t learned = 0, step_tokens = 0;
    for (std::int64_t i = begin; i < end; ++i) {
      learned += examples[order[static_cast<std::size_t>(i)]].answer_tokens;
      step_tokens += static_cast<std::int64_t>(examples[order[static_cast<std::size_t>(i)]].tokens.size());
    }

    // The global batch is cut into micro-batches the same way whatever the number of ranks (consecutive
    // examples of the epoch's order), and micro-batch j goes to rank j mod size. Each micro-batch's gradient is
    // computed alone and added into double sums, which the allreduce adds in double too: float sums grouped
    // by rank would round differently for each world size, and Adam would carry the difference into the
    // adapter. So the adapter is the same for 1, 2 or 4 ranks, dropout masks included (keyed by j).
    GradientSum& sum = *gradient_sum;
    sum.begin_step();
    std::vector<double> loss_sum{0.0};
    const std::int64_t micro_batches = (end - begin + micro - 1) / micro;
    bool interrupted = false;
    for (std::int64_t j = comm.rank(); j < micro_batches; j += comm.size()) {  // comm: the data group
      // A stop request ends this rank's share of the step at a micro-batch boundary; the step's partial
      // gradients are dropped (a resumed run redoes the step).
      // The ranks of a tensor group run each micro-batch together: they agree first.
      if (sharded ? tp.group->any(stop_requested()) : stop_requested()) {
        interrupted = true;
        break;
      }
      PackedBatch batch;
      for (std::int64_t i = begin + j * micro; i < std::min(end, begin + (j + 1) * micro); ++i) {
        const auto& example = examples[order[static_cast<std::size_t>(i)]];
        batch.add(example.tokens, example.targets);
      }
      // This rank's last micro-batch of the step: as its backward finishes each layer, the sum may start on
      // the buckets of the layers done (overlapping the rest of the backward where the backend can).
      const bool last = j + comm.size() >= micro_batches;
      auto layer_done = [&](std::size_t layer) { sum.ready_from(layout.layer_begin(layer)); };
      sum.begin_micro_batch();
      const BatchLoss loss = graph.forward_backward(
          batch, 1.0f / static_cast<float>(std::max<std::int64_t>(1, learned)),
          dropout_key(tc.seed, step, static_cast<std::size_t>(j)), gradients,
          last ? std::function<void(std::size_t)>(layer_done) : std::function<void(std::size_t)>());
      sum.end_micro_batch();
      loss_sum[0] += loss.loss_sum;
      result.activation_bytes = std::max(result.activation_bytes, graph.activation_bytes());
    }
    // The stop check of a step: every rank runs the same steps, so every rank reaches this point the same
    // number of times, and all of them stop after the same step.
    if (agree_to_stop(world, interrupted)) {
      sum.finish();  // buckets some ranks already started must complete on every rank; the sums are dropped
      save_progress();
      throw_agreed_stop(world, options.stage,  // its collective also keeps the others until the checkpoint is written
                        "step " + std::to_string(step) + " of " + std::to_string(total_steps) + " checkpointed");
    }
    sum.finish();
    if (options.inject_nan_at_step && *options.inject_nan_at_step == step + 1) {
      const FlatSegment& middle = layout.segments()[layout.segments().size() / 2];
      Tensor element = sum.gradients().slice_rows(middle.offset, 1, "injected NaN");
      const float nan = std::numeric_limits<float>::quiet_NaN();
      backend.write(element, std::span<const float>(&nan, 1));
    }
    comm.allreduce_sum(std::span<double>(loss_sum));  // a tensor group's ranks all hold the group's loss
    // Sharded: the replicated parts' gradients are partial sums over the tensor group, summed now (on a host
    // copy), and the norm counts each element of the whole adapter once.
    // On the cpu backend the flat gradients are host fp32 already: summed where they lie, not copied.
    std::vector<float> gradient_copy;
    std::span<float> host_gradients;
    if (sharded) {
      Tensor& flat = sum.gradients();
      const bool on_host = flat.device() == Device::CPU && flat.dtype() == DType::F32;
      if (!on_host) gradient_copy = state.host_values(flat);
      host_gradients = on_host ? std::span<float>(flat.f32(), static_cast<std::size_t>(flat.numel()))
                               : std::span<float>(gradient_copy);
      sharding->sum_replicated(host_gradients, *tp.group, kv_group.get());
      if (!on_host) backend.write(flat, gradient_copy);
    }

    // Checked on the summed values, which every rank holds alike: all ranks take the same decision. Only
    // the scalars of the check leave the backend.
    std::string non_finite;
    double norm = std::numeric_limits<double>::quiet_NaN();
    if (!std::isfinite(loss_sum[0])) {
      non_finite = std::string("the loss (") + (std::isnan(loss_sum[0]) ? "NaN" : "Inf") + ")";
    } else if (sharded) {
      std::int64_t bad = -1;
      for (std::size_t i = 0; i < host_gradients.size() && bad < 0; ++i)
        if (!std::isfinite(host_gradients[i])) bad = static_cast<std::int64_t>(i);
      double parts[2] = {sharding->norm_squares_counted(host_gradients), bad >= 0 ? 1.0 : 0.0};
      tp.group->allreduce_sum(std::span<double>(parts));
      if (parts[1] > 0) {
        if (bad < 0) {
          non_finite = "a gradient on another tensor-parallel rank";
        } else {
          const FlatSegment& segment = layout.segment_of(bad);
          non_finite = "the gradient of " + segment.key + " (" +
                       (std::isnan(host_gradients[static_cast<std::size_t>(bad)]) ? "NaN" : "Inf") +
                       " at element " + std::to_string(bad - segment.offset) + " of tensor-parallel rank " +
                       std::to_string(tp.rank) + "'s slice)";
        }
      } else {
        norm = std::sqrt(parts[0]);
        if (!std::isfinite(norm)) non_finite = "the gradient norm (overflow)";
      }
    } else {
      const Backend::FlatCheck check = backend.check_flat(sum.gradients(), layout.segment_ends());
      if (check.first_non_finite >= 0) {
        float value = 0;
        backend.to_host(sum.gradients().slice_rows(check.first_non_finite, 1, "non-finite gradient"),
                        std::span<float>(&value, 1));
        const FlatSegment& segment = layout.segment_of(check.first_non_finite);
        non_finite = "the gradient of " + segment.key + " (" + (std::isnan(value) ? "NaN" : "Inf") + " at element " +
                     std::to_string(check.first_non_finite - segment.offset) + ")";
      } else {
        norm = std::sqrt(check.sum_squares);
        if (!std::isfinite(norm)) non_finite = "the gradient norm (overflow)";
      }
    }
    const double lr = learning_rate_at(config.optimizer, step, total_steps);
    if (!non_finite.empty() && tc.nan_policy == "stop") {
      save_progress();  // the parameters are still those of the last good step
      world.barrier();  // every rank waits for the checkpoint before any exits (mpirun ends the job on an error)
      // Every rank took this decision on the same summed values: rank 0 reports, the others exit quietly.
      mark_failure_agreed();
      if (!leader) throw ReportedByAnotherRank(0, 1);
      throw Error("training step " + std::to_string(step + 1) + ": non-finite value in " + non_finite +
                  "; stopped (train.nan_policy: stop), the last good checkpoint (step " + std::to_string(step) +
                  ") is kept; set train.nan_policy: skip_step to skip such steps");
    }
    if (non_finite.empty()) {
      state.update(sum.gradients(), adamw_scalars(config.optimizer, lr, step + 1,
                                                  clip_factor(norm, config.optimizer.max_grad_norm)));
      result.last_loss = loss_sum[0] / static_cast<double>(std::max<std::int64_t>(1, learned));
    } else {
      // nan_policy skip_step: no update from this step's data; the schedule goes on.
      ++result.skipped_steps;
      if (leader)
        std::fprintf(stderr, "%sslearn_dist train: step %lld skipped: non-finite value in %s (train.nan_policy: "
                     "skip_step; %lld step(s) skipped so far)\n", terminal ? "\n" : "",
                     static_cast<long long>(step + 1), non_finite.c_str(),
                     static_cast<long long>(result.skipped_steps));
    }
    ++step;
    tokens_done += step_tokens;

    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tokens_per_second = static_cast<double>(tokens_done) / std::max(elapsed, 1e-9);
    const std::int64_t done_here = step - result.resumed_from;
    const double eta = elapsed / static_cast<double>(done_here) * static_cast<double>(total_steps - step);
    if (leader) {
      nlohmann::json line{{"step", step}, {"epoch", epoch}, {"loss", result.last_loss}, {"learning_rate", lr},
                          {"grad_norm", norm}, {"tokens", step_tokens}, {"learned_tokens", learned},
                          {"tokens_per_second", tokens_per_second}, {"elapsed", elapsed}};
      if (!non_finite.empty()) {
        const double loss = loss_sum[0] / static_cast<double>(std::max<std::int64_t>(1, learned));
        line["loss"] = std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json();
        line["grad_norm"] = nullptr;
        line["skipped"] = true;
        line["non_finite"] = non_finite;
      }
      metrics << line.dump() << '\n';
      metrics.flush();
      if (terminal) {
        const int width = 24, filled = static_cast<int>(width * step / total_steps);
        std::fprintf(stderr, "\rtrain [%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s   ",
                     std::string(static_cast<std::size_t>(filled), '#').c_str(),
                     std::string(static_cast<std::size_t>(width - filled), '.').c_str(), static_cast<long long>(step),
                     static_cast<long long>(total_steps), result.last_loss, lr, tokens_per_second,
                     format_duration(eta).c_str());
        if (step == total_steps) std::fputc('\n', stderr);
      } else if (options.show_progress && (step % config.log_every_steps == 0 || step == total_steps)) {
        std::fprintf(stderr, "slearn_dist train: step %lld/%lld epoch %lld loss %.4f lr %.3e grad_norm %.3f %.0f tok/s elapsed %s ETA %s%s\n",
                     static_cast<long long>(step), static_cast<long long>(total_steps), static_cast<long long>(epoch),
                     result.last_loss, lr, norm, tokens_per_second, format_duration(elapsed).c_str(),
                     format_duration(eta).c_str(), non_finite.empty() ? "" : " (step skipped: non-finite)");
      }
    }
    if (step % config.checkpoint.every_steps == 0 && step < total_steps) save(step);
  }
  result.steps_done = step;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.tokens_per_second = static_cast<double>(tokens_done) / std::max(result.seconds, 1e-9);
  save_progress();
  result.finished = step >= total_steps;
  if (result.finished && !sharded && leader)
    adapter.save(run_dir / "adapter", config.model, state.host_values(state.master()));
  if (result.finished && sharded && leader_group) {
    const std::vector<NamedArray> arrays = whole_arrays(state.master());
    std::vector<float> values;
    for (const auto& a : arrays) values.insert(values.end(), a.values.begin(), a.values.end());
    if (leader) whole.save(run_dir / "adapter", config.model, values);  // the whole PEFT adapter
  }
  world.barrier();
  return result;
}

std::int64_t training_steps(const TrainSettings& settings, std::int64_t examples, const std::string& source) {
  if (settings.global_batch_size < 1 || settings.epochs < 1 || examples < 0)
    throw InputError(source + ": train.global_batch_size and train.epochs must be at least 1");
  // Written so that nothing overflows: a quotient, then a product checked against the bound.
  const std::int64_t per_epoch = steps_per_epoch(examples, settings.global_batch_size);
  const std::int64_t steps = settings.max_steps > 0 ? settings.max_steps : std::int64_t{0};
  if (steps > kMaxTrainingSteps)
    throw InputError("train.max_steps " + std::to_string(steps) + " is out of range (at most " +
                     std::to_string(kMaxTrainingSteps) + ")");
  if (steps > 0) return steps;
  if (per_epoch > 0 && settings.epochs > kMaxTrainingSteps / per_epoch)
    throw InputError(source + ": train.epochs " + std::to_string(settings.epochs) + " x " + std::to_string(per_epoch) +
                     " step(s) per epoch (" + std::to_string(examples) + " examples, train.global_batch_size " +
                     std::to_string(settings.global_batch_size) + ") is out of range: at most " +
                     std::to_string(kMaxTrainingSteps) + " optimizer steps");
  return settings.epochs * per_epoch;
}

std::unique_ptr<Backend> make_training_backend(std::string_view name, std::string_view cpu_weights) {
  return make_backend(name, cpu_weights_from_name(cpu_weights));
}

TrainResult train_lora(const TrainConfig& config, Communicator& comm, const TrainRunOptions& options) {
  apply_thread_plan(plan_threads(config.threads));
  // Every input is read and checked on every rank before the run directory is touched; under MPI the ranks
  // agree, so a bad one is one line for the job and no rank waits for the others.
  std::unique_ptr<Backend> backend;
  std::optional<Mesh> mesh;
  std::optional<Model> model;
  std::optional<Tokenizer> tokenizer;
  std::vector<QaRecord> records;
  ExampleStats stats;
  std::vector<TrainingExample> examples;
  check_on_all_ranks(comm, [&] {
    backend = make_training_backend(config.backend, config.cpu_weights);
    // world = T x D: the model sharded over each tensor group, the micro-batches dealt over the data groups.
    mesh.emplace(make_mesh(comm, static_cast<int>(config.parallel.tensor)));
    model.emplace(Model::load(config.model, *backend,
                              TensorParallel{mesh->tensor_group.get(), mesh->tensor_rank, mesh->tensor}));
    tokenizer.emplace(Tokenizer::from_dir(config.model));
    check_tokenizer_fits_vocab(*tokenizer, model->config().vocab_size, fs::path(config.model) / "tokenizer.json");
    const ChatFormat format = config.data.chat_format == "auto"
                                  ? default_chat_format(model->config().model_type, *tokenizer)
                                  : chat_format_from_name(config.data.chat_format);
    records = load_qa_records(config.data);
    examples = build_examples(records, *tokenizer, format, config.data, stats);
    training_steps(config.train, static_cast<std::int64_t>(examples.size()), config.data.path);
  });
  if (comm.rank() == 0 && options.show_progress) {
    std::fprintf(stderr, "slearn_dist train: %zu records, %lld examples (%lld truncated, %lld dropped: no answer token left within max_length %lld), %lld tokens, %lld learned\n",
                 records.size(), static_cast<long long>(stats.examples), static_cast<long long>(stats.truncated),
                 static_cast<long long>(stats.dropped_no_answer), static_cast<long long>(config.data.max_length),
                 static_cast<long long>(stats.tokens), static_cast<long long>(stats.learned_tokens));
    if (mesh->tensor > 1)
      std::fprintf(stderr, "slearn_dist train: %d ranks = %d (tensor) x %d (data)\n", comm.size(), mesh->tensor,
                   mesh->data);
  }
  // The run directory last, once every input passed: a bad input leaves it as it was. Only a directory of ours
  // (it holds train_config.yaml) or a new or empty one is written into; one job at a time (the lock also checks
  // that run_dir can be a directory at all), held by rank 0 for all the ranks.
  std::optional<RunDirLock> lock;
  check_on_all_ranks(comm, [&] {
    if (comm.rank() != 0) return;
    refuse_foreign_run_dir(config.run_dir, "train_config.yaml", "training run directory");
    lock.emplace(config.run_dir);
  });
  TrainResult result = train_lora_on_examples(*model, examples, fingerprint_file(config.data.path), config, comm,
                                              mesh->tensor == 1 ? comm : *mesh->data_group, options);
  result.examples = stats;
  return result;
}

}  // namespace slearn

#include "slearn/trainer.hpp"

#include <unistd.h>

#include <chrono>
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
#include "slearn/model.hpp"
#include "slearn/stop.hpp"
#include "slearn/threads.hpp"
#include "train/lora_graph.hpp"
#include "train/optimizer.hpp"
#include "util/atomic_file.hpp"
#include "util/run_dir.hpp"

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

std::vector<NamedArray> to_arrays(const std::vector<std::string>& keys, const std::vector<Tensor*>& tensors) {
  std::vector<NamedArray> arrays;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    arrays.push_back({keys[i], tensors[i]->shape(),
                      std::vector<float>(tensors[i]->f32(), tensors[i]->f32() + tensors[i]->numel())});
  return arrays;
}

void from_arrays(const std::vector<NamedArray>& arrays, const std::vector<std::string>& keys,
                 const std::vector<Tensor*>& tensors, const std::string& what) {
  if (arrays.size() != tensors.size()) throw InputError("checkpoint: " + what + " holds a different set of tensors");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (arrays[i].name != keys[i] || arrays[i].shape != tensors[i]->shape())
      throw InputError("checkpoint: " + what + " tensor \"" + arrays[i].name + "\" does not match \"" + keys[i] + "\"");
    std::copy(arrays[i].values.begin(), arrays[i].values.end(), tensors[i]->f32());
  }
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

bool all_finite(const Tensor& t) {
  const float* v = t.f32();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// Where a non-finite value shows first in a step: the summed loss, else the first LoRA parameter (in adapter
// order: layer, projection, A before B) whose summed gradient holds one; empty when all are finite.
std::string first_non_finite(double loss_sum, const std::vector<Tensor>& gradients,
                             const std::vector<std::string>& keys) {
  if (!std::isfinite(loss_sum)) return std::string("the loss (") + (std::isnan(loss_sum) ? "NaN" : "Inf") + ")";
  for (std::size_t i = 0; i < gradients.size(); ++i) {
    const float* v = gradients[i].f32();
    for (std::int64_t j = 0; j < gradients[i].numel(); ++j)
      if (!std::isfinite(v[j]))
        return "the gradient of " + keys[i] + " (" + (std::isnan(v[j]) ? "NaN" : "Inf") + " at element " +
               std::to_string(j) + ")";
  }
  return {};
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds);
  char buffer[32];
  if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(buffer, sizeof buffer, "%ldm%02lds", s / 60, s % 60);
  return buffer;
}

}  // namespace

TrainResult train_lora_on_examples(Model& model, const std::vector<TrainingExample>& examples,
                                   const std::string& data_fingerprint, const TrainConfig& config,
                                   Communicator& comm, const TrainRunOptions& options) {
  if (examples.empty()) throw InputError("no training examples (every record was empty or dropped)");
  const fs::path run_dir(config.run_dir);
  const fs::path checkpoint_dir = run_dir / "checkpoints";
  const fs::path metrics_path = run_dir / "metrics.jsonl";
  const bool leader = comm.rank() == 0;
  const auto& tc = config.train;
  // The tokenizer shapes the examples, so it counts as part of the model.
  const std::string model_fingerprint =
      fingerprint_text(fingerprint_model(config.model) + fingerprint_tokenizer(config.model));
  const std::string fingerprint = "model:" + model_fingerprint + " data:" + data_fingerprint +
                                  " config:" + fingerprint_text(shaping_settings(config) + options.initial_adapter);

  Backend& backend = model.backend();
  LoraAdapter adapter = options.initial_adapter.empty()
                            ? LoraAdapter::initialize(model.config(), config.lora, tc.seed, backend)
                            : LoraAdapter::load(options.initial_adapter, model.config(), backend);
  std::vector<Tensor*> parameters;
  std::vector<std::string> keys;
  for (auto& p : adapter.parameters()) {
    parameters.push_back(p.tensor);
    keys.push_back(p.key);
  }
  AdamW optimizer(config.optimizer, parameters);
  LoraTrainingGraph graph(model, adapter, tc.gradient_checkpointing);

  const auto count = static_cast<std::int64_t>(examples.size());
  const std::int64_t epoch_steps = steps_per_epoch(count, tc.global_batch_size);
  const std::int64_t total_steps = training_steps(tc, count, config.run_dir);

  TrainResult result;
  result.total_steps = total_steps;
  std::int64_t step = 0;
  std::optional<TrainState> restored;
  // Every rank reads the same checkpoint and the leader the metrics: a damaged one is refused once, by all
  // ranks together (one line for the job), never on some ranks only.
  check_on_all_ranks(comm, [&] {
    if (!options.force) restored = load_latest_checkpoint(checkpoint_dir, fingerprint);
    if (restored) {
      from_arrays(restored->adapter, keys, parameters, "adapter");
      std::vector<Tensor*> m, v;
      for (auto& t : optimizer.first_moments()) m.push_back(&t);
      for (auto& t : optimizer.second_moments()) v.push_back(&t);
      from_arrays(restored->adam_m, keys, m, "adam_m");
      from_arrays(restored->adam_v, keys, v, "adam_v");
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
    // holds the same parameters and moments, so every rank checks and all of them stop alike.
    for (std::size_t i = 0; i < parameters.size(); ++i)
      if (!all_finite(*parameters[i]) || !all_finite(optimizer.first_moments()[i]) ||
          !all_finite(optimizer.second_moments()[i])) {
        mark_failure_agreed();
      if (!leader) throw ReportedByAnotherRank(0, 1);
        throw Error("training step " + std::to_string(done) + ": " + keys[i] +
                    " or its optimizer state is not finite; no checkpoint written, the last good one is kept");
      }
    if (!leader) return;
    TrainState state;
    state.step = done;
    state.epoch = done / epoch_steps;
    state.position = (done % epoch_steps) * tc.global_batch_size;
    state.adapter = to_arrays(keys, parameters);
    std::vector<Tensor*> m, v;
    for (auto& t : optimizer.first_moments()) m.push_back(&t);
    for (auto& t : optimizer.second_moments()) v.push_back(&t);
    state.adam_m = to_arrays(keys, m);
    state.adam_v = to_arrays(keys, v);
    state.rng_state = "counter-based: seed " + std::to_string(tc.seed) + ", step " + std::to_string(done);
    state.config_yaml = config.source_text;
    state.fingerprint = fingerprint;
    save_checkpoint(checkpoint_dir, state, config.checkpoint.keep_last);
  };

  std::ofstream metrics;
  if (leader) metrics.open(metrics_path, std::ios::app);
  const bool terminal = options.show_progress && leader && isatty(STDERR_FILENO);
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
    auto gradients = graph.make_gradients();
    std::vector<std::vector<double>> gradient_sums(gradients.size());
    for (std::size_t i = 0; i < gradients.size(); ++i)
      gradient_sums[i].assign(static_cast<std::size_t>(gradients[i].numel()), 0.0);
    std::vector<double> loss_sum{0.0};
    const std::int64_t micro = tc.micro_batch_size;
    const std::int64_t micro_batches = (end - begin + micro - 1) / micro;
    bool interrupted = false;
    for (std::int64_t j = comm.rank(); j < micro_batches; j += comm.size()) {
      // A stop request ends this rank's share of the step at a micro-batch boundary; the step's partial
      // gradients are dropped (a resumed run redoes the step).
      if (stop_requested()) {
        interrupted = true;
        break;
      }
      PackedBatch batch;
      for (std::int64_t i = begin + j * micro; i < std::min(end, begin + (j + 1) * micro); ++i) {
        const auto& example = examples[order[static_cast<std::size_t>(i)]];
        batch.add(example.tokens, example.targets);
      }
      for (Tensor& g : gradients) std::fill_n(g.f32(), g.numel(), 0.0f);
      const BatchLoss loss = graph.forward_backward(batch, 1.0f / static_cast<float>(std::max<std::int64_t>(1, learned)),
                                                    dropout_key(tc.seed, step, static_cast<std::size_t>(j)), gradients);
      for (std::size_t i = 0; i < gradients.size(); ++i) {
        const float* g = gradients[i].f32();
        double* sum = gradient_sums[i].data();
        for (std::int64_t k = 0; k < gradients[i].numel(); ++k) sum[k] += g[k];
      }
      loss_sum[0] += loss.loss_sum;
      result.activation_bytes = std::max(result.activation_bytes, graph.activation_bytes());
    }
    // The stop check of a step: every rank runs the same steps, so every rank reaches this point the same
    // number of times, and all of them stop after the same step.
    if (agree_to_stop(comm, interrupted)) {
      save_progress();
      throw_agreed_stop(comm, options.stage,  // its collective also keeps the others until the checkpoint is written
                        "step " + std::to_string(step) + " of " + std::to_string(total_steps) + " checkpointed");
    }
    for (std::size_t i = 0; i < gradients.size(); ++i) {
      comm.allreduce_sum(std::span<double>(gradient_sums[i]));
      float* g = gradients[i].f32();
      for (std::size_t k = 0; k < gradient_sums[i].size(); ++k) g[k] = static_cast<float>(gradient_sums[i][k]);
    }
    if (options.inject_nan_at_step && *options.inject_nan_at_step == step + 1)
      gradients[gradients.size() / 2].f32()[0] = std::numeric_limits<float>::quiet_NaN();
    comm.allreduce_sum(std::span<double>(loss_sum));

    // Checked on the summed values, which every rank holds alike: all ranks take the same decision.
    std::string non_finite = first_non_finite(loss_sum[0], gradients, keys);
    const double norm = non_finite.empty() ? global_norm(gradients) : std::numeric_limits<double>::quiet_NaN();
    if (non_finite.empty() && !std::isfinite(norm)) non_finite = "the gradient norm (overflow)";
    const double lr = learning_rate_at(config.optimizer, step, total_steps);
    if (!non_finite.empty() && tc.nan_policy == "stop") {
      save_progress();  // the parameters are still those of the last good step
      comm.barrier();   // every rank waits for the checkpoint before any exits (mpirun ends the job on an error)
      // Every rank took this decision on the same summed values: rank 0 reports, the others exit quietly.
      mark_failure_agreed();
      if (!leader) throw ReportedByAnotherRank(0, 1);
      throw Error("training step " + std::to_string(step + 1) + ": non-finite value in " + non_finite +
                  "; stopped (train.nan_policy: stop), the last good checkpoint (step " + std::to_string(step) +
                  ") is kept; set train.nan_policy: skip_step to skip such steps");
    }
    if (non_finite.empty()) {
      clip_gradients(gradients, norm, config.optimizer.max_grad_norm);
      optimizer.update(parameters, gradients, lr, step + 1);
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
  if (result.finished && leader) adapter.save(run_dir / "adapter", config.model);
  comm.barrier();
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

std::unique_ptr<Backend> make_training_backend(std::string_view name) {
  auto backend = make_backend(name == "auto" ? "cpu" : name);
  if (backend->name() != "cpu")
    throw InputError("LoRA training runs on the cpu backend only for now; the " + std::string(backend->name()) +
                     " backend serves generation (the GPU trainer is not written yet, see docs/cuda.md): set "
                     "backend: cpu");
  return backend;
}

TrainResult train_lora(const TrainConfig& config, Communicator& comm, const TrainRunOptions& options) {
  apply_thread_plan(plan_threads(config.threads));
  auto backend = make_training_backend(config.backend);
  Model model = Model::load(config.model, *backend);
  const Tokenizer tokenizer = Tokenizer::from_dir(config.model);
  check_tokenizer_fits_vocab(tokenizer, model.config().vocab_size, fs::path(config.model) / "tokenizer.json");
  const ChatFormat format = config.data.chat_format == "auto"
                                ? default_chat_format(model.config().model_type, tokenizer)
                                : chat_format_from_name(config.data.chat_format);
  const std::vector<QaRecord> records = load_qa_records(config.data);
  ExampleStats stats;
  const std::vector<TrainingExample> examples = build_examples(records, tokenizer, format, config.data, stats);
  if (comm.rank() == 0 && options.show_progress) {
    std::fprintf(stderr, "slearn_dist train: %zu records, %lld examples (%lld truncated, %lld dropped: no answer token left within max_length %lld), %lld tokens, %lld learned\n",
                 records.size(), static_cast<long long>(stats.examples), static_cast<long long>(stats.truncated),
                 static_cast<long long>(stats.dropped_no_answer), static_cast<long long>(config.data.max_length),
                 static_cast<long long>(stats.tokens), static_cast<long long>(stats.learned_tokens));
  }
  training_steps(config.train, static_cast<std::int64_t>(examples.size()), config.data.path);
  // The run directory last, once every input passed: a bad input leaves it as it was. Only a directory of ours
  // (it holds train_config.yaml) or a new or empty one is written into; one job at a time (the lock also checks
  // that run_dir can be a directory at all).
  refuse_foreign_run_dir(config.run_dir, "train_config.yaml", "training run directory");
  const RunDirLock lock(config.run_dir);
  TrainResult result = train_lora_on_examples(model, examples, fingerprint_file(config.data.path), config, comm, options);
  result.examples = stats;
  return result;
}

}  // namespace slearn

// Tensor-parallel inference on the CPU: what each of the T ranks of a tensor group holds, and what it sends per
// token (docs/performance.md, "Tensor parallelism: memory and communication"). Run under mpirun; the world is
// one tensor group of T = world size ranks:
//
//   mpirun --oversubscribe -np T build/bin/bench_tensor_parallel --layers 2 [--shape NAME] [--dir DIR] [--keep]
//
// Rank 0 writes a random checkpoint of a real model's shape (reference_shape(--shape), default qwen2.5-7b;
// qwen1.5-32b writes the shape configs/qwen1.5-32b-chat.yaml is for) cut to --layers
// layers, bf16 safetensors and config.json, into a directory of its own that it removes at the end (unless
// --keep): under DIR when given (DIR must exist; nothing in it but that directory is touched), else under the
// system temp dir. --checkpoint reads an existing checkpoint instead (one kept before), never writing it.
// The weights come from one pool of random bf16-exact values, each tensor a different window of it, so that
// writing needs a buffer of the largest tensor (the embedding: 2.2 GB in fp32 at the 7B shape, 3.1 GB at
// 32B) rather than of the whole model: the figures here are sizes and bytes, which the values do not change.
//
// Every rank loads its shard with Model::load(dir, cpu, TensorParallel{...}) through a CountingCommunicator
// wrapped around the tensor group (so the model's sums over the group are counted), then reports:
//   memory  parameter_count(), its fp32 bytes (the CPU backend holds fp32), VmRSS / RssAnon / RssFile / VmHWM
//           from /proc/self/status after the load, and the largest RssAnon and RssFile seen during it (a thread
//           samples them: the loader unmaps the checkpoint when done, so the file pages it read count in
//           RssFile only while it runs);
//           beside it, the whole model's parameters (from the checkpoint's headers: what a T = 1 rank holds);
//   traffic the bytes this rank allreduces and allgathers (CountingCommunicator) in a prefill of 4 prompts of
//           16 random ids in one forward, then in 8 single-token decode steps of the 4 sequences, tokens picked
//           greedily with vocab_parallel_greedy on the rank's slice of the vocabulary (at T = 1: the argmax of
//           the whole row, no collective), per prefilled and per generated token, against the formula: 2
//           allreduces per layer of [tokens, hidden] fp32, plus the greedy pick's one int64 gather of 7 header
//           words and 2 words per row (src/dist/vocab_parallel.cpp).
// The forwards are driven here so that prefill and decode are counted apart (slearn::generate runs a
// sequence's prompt and its first token in one forward); then the same prompts go through slearn::generate
// (greedy, 8 new tokens, batch 4), whose traffic is counted as a whole and whose tokens must be the same.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dist/vocab_parallel.hpp"
#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/counting_communicator.hpp"
#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/mesh.hpp"
#include "slearn/mix64.hpp"
#include "slearn/model.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/threads.hpp"

namespace {

namespace fs = std::filesystem;
using slearn::TokenId;

constexpr int kPrompts = 4, kPromptLength = 16, kDecodeSteps = 8, kGenerateTokens = 8;
constexpr std::int64_t kGreedyHeaderWords = 7;  // vocab_parallel.cpp's block header (kHeaderSize)
constexpr double kMiB = 1024.0 * 1024.0;

// ---- The checkpoint ----

std::vector<std::pair<std::string, std::vector<std::int64_t>>> tensor_shapes(const slearn::ModelConfig& c) {
  const std::int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim,
                     inter = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes{{"model.embed_tokens.weight", {c.vocab_size, h}},
                                                                        {"model.norm.weight", {h}}};
  if (!c.tie_word_embeddings) shapes.push_back({"lm_head.weight", {c.vocab_size, h}});
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {h}});
    shapes.push_back({p + "post_attention_layernorm.weight", {h}});
    shapes.push_back({p + "self_attn.q_proj.weight", {q, h}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    if (c.attention_bias) {
      shapes.push_back({p + "self_attn.q_proj.bias", {q}});
      shapes.push_back({p + "self_attn.k_proj.bias", {kv}});
      shapes.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    shapes.push_back({p + "self_attn.o_proj.weight", {h, q}});
    shapes.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.up_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.down_proj.weight", {h, inter}});
  }
  return shapes;
}

void write_checkpoint(const fs::path& dir, const slearn::ModelConfig& c) {
  const nlohmann::json config{
      {"architectures", {"Qwen2ForCausalLM"}}, {"model_type", c.model_type}, {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads}, {"head_dim", c.head_dim}, {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta}, {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings}, {"hidden_act", c.hidden_act},
      {"torch_dtype", "bfloat16"}, {"use_sliding_window", false}};
  std::ofstream(dir / "config.json") << config.dump(2) << "\n";

  const auto shapes = tensor_shapes(c);
  std::int64_t largest = 0;
  for (const auto& [name, shape] : shapes) {
    std::int64_t n = 1;
    for (auto e : shape) n *= e;
    largest = std::max(largest, n);
  }
  // Uniform in +-0.035 (bf16-exact), counter-based; norms are 1 (their own small buffer).
  constexpr std::int64_t kWindowStride = 4099;  // tensor i starts at i * stride: a different window each
  std::vector<float> pool(static_cast<std::size_t>(largest + kWindowStride * static_cast<std::int64_t>(shapes.size())));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(pool.size()); ++i) {
    const double u = static_cast<double>(slearn::mix64(static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
    pool[static_cast<std::size_t>(i)] = slearn::bf16_to_f32(slearn::f32_to_bf16(static_cast<float>((2 * u - 1) * 0.035)));
  }
  const std::vector<float> ones(static_cast<std::size_t>(c.hidden_size), 1.0f);
  std::vector<slearn::TensorToWrite> tensors;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto& [name, shape] = shapes[i];
    std::int64_t n = 1;
    for (auto e : shape) n *= e;
    const bool norm = name.find("norm") != std::string::npos;
    const std::span<const float> values =
        norm ? std::span<const float>(ones)
             : std::span<const float>(pool).subspan(static_cast<std::size_t>(kWindowStride * static_cast<std::int64_t>(i)),
                                                   static_cast<std::size_t>(n));
    tensors.push_back({name, shape, slearn::DType::BF16, values});
  }
  slearn::write_safetensors(dir / "model.safetensors", tensors);
}

// ---- Measurements ----

// VmRSS, RssAnon, RssFile and VmHWM of this process in bytes (/proc/self/status gives kB).
std::map<std::string, std::int64_t> memory_status() {
  std::map<std::string, std::int64_t> out{{"VmRSS", 0}, {"RssAnon", 0}, {"RssFile", 0}, {"VmHWM", 0}};
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto found = out.find(line.substr(0, colon));
    if (found != out.end()) found->second = std::stoll(line.substr(colon + 1)) * 1024;
  }
  return out;
}

// The largest RssFile and RssAnon seen while a scope runs, sampled every few milliseconds by a thread: the
// loader unmaps the checkpoint when it is done, so the file pages it read show only while it runs.
class PeakSampler {
 public:
  PeakSampler()
      : thread_([this] {
          while (!stop_.load()) {
            const auto now = memory_status();
            peak_file_ = std::max(peak_file_.load(), now.at("RssFile"));
            peak_anon_ = std::max(peak_anon_.load(), now.at("RssAnon"));
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        }) {}
  ~PeakSampler() { stop(); }
  PeakSampler(const PeakSampler&) = delete;
  PeakSampler& operator=(const PeakSampler&) = delete;
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::int64_t peak_file() const { return peak_file_; }
  std::int64_t peak_anon() const { return peak_anon_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> peak_file_{0}, peak_anon_{0};
  std::thread thread_;
};

struct Traffic {
  std::int64_t allreduce_calls = 0, allreduce_bytes = 0, allgather_calls = 0, allgather_bytes = 0, other_calls = 0;
};

Traffic take(slearn::CountingCommunicator& counting) {
  const Traffic t{counting.allreduce_counts().calls,
                  counting.allreduce_counts().bytes,
                  counting.allgather_counts().calls,
                  counting.allgather_counts().bytes,
                  counting.broadcast_counts().calls + counting.other_counts().calls};
  counting.reset();
  return t;
}

// What the formula says one forward of `tokens` tokens and `rows` greedy rows sends from one rank.
std::int64_t formula_bytes(const slearn::ModelConfig& c, int tensor, std::int64_t tokens, std::int64_t rows) {
  if (tensor == 1) return 0;
  const std::int64_t allreduce = 2 * c.num_hidden_layers * tokens * c.hidden_size * 4;
  const std::int64_t greedy = (kGreedyHeaderWords + 2 * rows) * 8;
  return allreduce + greedy;
}

std::string fixed(double value, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << value;
  return s.str();
}

std::string join_argv(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) out += (i ? " " : "") + std::string(argv[i]);
  return out;
}

// The checkpoint directory rank 0 made: removed when run() ends, normally or by an exception, unless kept.
class OwnedDirectory {
 public:
  OwnedDirectory() = default;
  OwnedDirectory(const OwnedDirectory&) = delete;
  OwnedDirectory& operator=(const OwnedDirectory&) = delete;
  ~OwnedDirectory() {
    std::error_code ignored;
    if (!path.empty() && !keep) fs::remove_all(path, ignored);
  }
  fs::path path;
  bool keep = false;
};

int run(slearn::Communicator& world, int argc, char** argv) {
  CLI::App app{"Tensor-parallel CPU inference: memory per rank and communication per token (under mpirun)"};
  int layers = 2;
  std::string shape_name = "qwen2.5-7b", parent, checkpoint;
  bool keep = false;
  std::optional<int> threads;
  app.add_option("--layers", layers, "layers of the shape to keep")->capture_default_str();
  app.add_option("--shape", shape_name, "qwen2.5-0.5b, qwen2.5-7b, qwen1.5-32b or qwen2.5-72b")->capture_default_str();
  app.add_option("--dir", parent, "an existing directory to write the checkpoint's own directory under "
                                  "(default: the system temp dir)");
  app.add_flag("--keep", keep, "keep the written checkpoint (its path is printed)");
  app.add_option("--checkpoint", checkpoint, "use this existing checkpoint instead of writing one (read only)");
  app.add_option("--threads", threads, "per rank; default: this process's share of the cores");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return world.rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  const slearn::ThreadPlan plan = slearn::plan_threads(threads);
  slearn::apply_thread_plan(plan);
  const int tensor = world.size();
  const bool root = world.rank() == 0;

  slearn::ModelConfig shape = slearn::reference_shape(shape_name);
  if (layers < 1 || layers > shape.num_hidden_layers)
    throw slearn::InputError("--layers must be 1 to " + std::to_string(shape.num_hidden_layers));
  shape.num_hidden_layers = layers;
  slearn::check_tensor_parallel(shape, tensor);  // before writing gigabytes

  // Rank 0 makes the directory and tells the others where it is.
  std::string dir_text = checkpoint;
  OwnedDirectory owned;  // declared before the model: removed after the model has unmapped it
  owned.keep = keep;
  if (checkpoint.empty()) {
    if (root) {
      const fs::path base = parent.empty() ? fs::temp_directory_path() : fs::path(parent);
      if (!fs::is_directory(base)) throw slearn::InputError("--dir " + base.string() + ": not an existing directory");
      const fs::path dir = base / ("slearn-bench-tp-" + std::to_string(::getpid()) + "-layers-" + std::to_string(layers));
      if (!fs::create_directory(dir)) throw slearn::InputError(dir.string() + ": exists already; not writing into it");
      owned.path = dir;
      std::cout << "# writing a random " << shape_name << "-shape checkpoint (" << layers << " layers, bf16) to " << dir.string()
                << std::endl;
      write_checkpoint(dir, shape);
      dir_text = dir.string();
    }
    world.broadcast(dir_text, 0);
  }
  const fs::path dir = dir_text;
  world.barrier();

  const slearn::Mesh mesh = slearn::make_mesh(world, tensor);
  slearn::CountingCommunicator counting(*mesh.tensor_group);
  // fp32 weights, as the figures of docs/performance.md were measured (the checkpoint is bf16).
  auto backend = slearn::make_cpu_backend(slearn::CpuWeights::F32);
  PeakSampler during_load;
  slearn::Model model = slearn::Model::load(dir, *backend, slearn::TensorParallel{&counting, mesh.tensor_rank, mesh.tensor});
  during_load.stop();
  const auto memory = memory_status();
  const Traffic load_traffic = take(counting);
  const slearn::ModelConfig& config = model.config();

  std::int64_t whole_params = 0;
  const slearn::WeightStore store = slearn::WeightStore::open(dir);
  for (const std::string& name : store.names()) whole_params += store.info(name).numel();

  // The same prompts on every rank (the model's vocabulary; a fixed seed).
  std::mt19937 rng(1);
  std::uniform_int_distribution<TokenId> token(0, static_cast<TokenId>(config.vocab_size - 1));
  std::vector<TokenId> prompt_ids;
  std::vector<slearn::SequenceChunk> chunks;
  for (int s = 0; s < kPrompts; ++s) {
    chunks.push_back({s, 0, kPromptLength});
    for (int i = 0; i < kPromptLength; ++i) prompt_ids.push_back(token(rng));
  }
  std::vector<TokenId> tokens = prompt_ids;
  slearn::KVCache cache = model.make_cache(kPrompts, kPromptLength + kDecodeSteps + 8);
  const slearn::VocabShard shard{model.local_vocab_first(), model.local_vocab_size(), config.vocab_size};
  std::vector<float> host;
  std::vector<TokenId> next(kPrompts);
  auto step = [&] {
    const slearn::Tensor& logits = model.forward_logits(tokens, chunks, cache, slearn::Model::Logits::LastOfEachChunk);
    host.resize(static_cast<std::size_t>(logits.numel()));
    backend->to_host(logits, host);
    if (tensor > 1) {
      slearn::vocab_parallel_greedy(host, shard, next, counting);
      return;
    }
    const auto vocab = static_cast<std::ptrdiff_t>(config.vocab_size);
    for (std::size_t r = 0; r < next.size(); ++r) {
      const auto row = host.begin() + static_cast<std::ptrdiff_t>(r) * vocab;
      next[r] = static_cast<TokenId>(std::max_element(row, row + vocab) - row);
    }
  };
  step();
  const Traffic prefill = take(counting);
  std::vector<TokenId> first_sequence{next[0]};
  for (int d = 0; d < kDecodeSteps; ++d) {
    tokens.assign(next.begin(), next.end());
    for (int s = 0; s < kPrompts; ++s) chunks[static_cast<std::size_t>(s)] = {s, kPromptLength + d, 1};
    step();
    first_sequence.push_back(next[0]);
  }
  const Traffic decode = take(counting);

  // The same prompts through slearn::generate (greedy, 8 new tokens, batch 4): its first forward prefills the
  // prompts and picks the first token, then 7 decode steps; its tokens must be the ones picked above.
  std::vector<std::vector<TokenId>> prompts(kPrompts);
  for (int s = 0; s < kPrompts; ++s)
    prompts[static_cast<std::size_t>(s)].assign(prompt_ids.begin() + s * kPromptLength,
                                                prompt_ids.begin() + (s + 1) * kPromptLength);
  slearn::GenerationOptions options;
  options.max_new_tokens = kGenerateTokens;
  options.batch_size = kPrompts;
  const std::vector<slearn::GenerationResult> results = slearn::generate(model, prompts, options);
  const Traffic generated_traffic = take(counting);
  const bool generate_agrees =
      results.size() == prompts.size() &&
      std::equal(results[0].tokens.begin(), results[0].tokens.end(), first_sequence.begin(),
                 first_sequence.begin() + std::min<std::ptrdiff_t>(kGenerateTokens, std::ssize(first_sequence)));

  // Every rank's figures to rank 0, one row each.
  const std::vector<std::int64_t> mine{
      static_cast<std::int64_t>(model.parameter_count()), memory.at("RssAnon"), memory.at("RssFile"),
      memory.at("VmRSS"), memory.at("VmHWM"), prefill.allreduce_bytes, prefill.allgather_bytes, decode.allreduce_bytes,
      decode.allgather_bytes, prefill.allreduce_calls, prefill.allgather_calls, decode.allreduce_calls,
      decode.allgather_calls, load_traffic.allreduce_calls + load_traffic.allgather_calls + load_traffic.other_calls,
      load_traffic.allreduce_bytes + load_traffic.allgather_bytes, prefill.other_calls + decode.other_calls,
      during_load.peak_file(), during_load.peak_anon(), generated_traffic.allreduce_calls,
      generated_traffic.allreduce_bytes, generated_traffic.allgather_calls, generated_traffic.allgather_bytes,
      generated_traffic.other_calls, generate_agrees ? 1 : 0};
  const std::vector<std::int64_t> all = world.allgather(mine);
  const std::size_t width = mine.size();

  if (root) {
    const std::int64_t prefill_tokens = kPrompts * kPromptLength, generated = kPrompts * kDecodeSteps;
    const double whole_mib = static_cast<double>(whole_params) * 4 / kMiB;
    const std::int64_t embed = config.vocab_size * config.hidden_size;
    std::cout << "# bench_tensor_parallel: " << join_argv(argc, argv) << "\n"
              << "# model: " << shape_name << " shape cut to " << config.num_hidden_layers << " layers (hidden "
              << config.hidden_size << ", " << config.num_attention_heads << " heads, " << config.num_key_value_heads
              << " kv heads, head_dim " << config.head_dim << ", intermediate " << config.intermediate_size
              << ", vocab " << config.vocab_size << ", untied), bf16 checkpoint " << dir.string() << "\n"
              << "# T = " << tensor << " (one tensor group), CPU backend: weights resident in fp32; " << plan.describe()
              << "\n"
              << "# the token embedding (" << config.vocab_size << " x " << config.hidden_size << " = " << embed
              << " parameters, " << fixed(static_cast<double>(embed) * 4 / kMiB, 1)
              << " MiB fp32) is replicated on every rank; the LM head is split by vocabulary\n"
              << "# whole model (what a T = 1 rank holds): " << whole_params << " parameters, " << fixed(whole_mib, 1)
              << " MiB fp32\n#\n"
              << "# RssAnon/RssFile/VmRSS: after the load; load_peak: the most seen during it (sampled every 5 ms; the\n"
              << "# loader unmaps the checkpoint when done, so its file pages show only then); VmHWM: the process's peak\n"
              << "# RSS (rank 0's includes writing the checkpoint: the fp32 buffer of the largest tensor)\n#\n"
              << "#  T  rank        params  weight_MiB  of_whole  RssAnon_MiB  RssFile_MiB  VmRSS_MiB  "
                 "load_peak_RssAnon_MiB  load_peak_RssFile_MiB  VmHWM_MiB\n";
    for (int r = 0; r < tensor; ++r) {
      const std::int64_t* row = all.data() + static_cast<std::size_t>(r) * width;
      const double weight_mib = static_cast<double>(row[0]) * 4 / kMiB;
      std::printf("%4d %5d %13lld %11.1f %9.3f %12.1f %12.1f %10.1f %22.1f %22.1f %10.1f\n", tensor, r,
                  static_cast<long long>(row[0]), weight_mib, weight_mib / whole_mib, static_cast<double>(row[1]) / kMiB,
                  static_cast<double>(row[2]) / kMiB, static_cast<double>(row[3]) / kMiB,
                  static_cast<double>(row[17]) / kMiB, static_cast<double>(row[16]) / kMiB,
                  static_cast<double>(row[4]) / kMiB);
    }
    const std::int64_t prefill_formula = formula_bytes(config, tensor, prefill_tokens, kPrompts);
    const std::int64_t decode_formula = kDecodeSteps * formula_bytes(config, tensor, kPrompts, kPrompts);
    std::cout << "#\n# communication per rank over the tensor group (bytes this rank contributes; "
              << prefill_tokens << " prefilled tokens in 1 forward, " << generated << " generated tokens in "
              << kDecodeSteps << " decode steps of " << kPrompts << ")\n"
              << "#  T  rank  phase    allreduce_calls  allreduce_B  allgather_calls  allgather_B  B/token  "
                 "formula_B/token\n";
    for (int r = 0; r < tensor; ++r) {
      const std::int64_t* row = all.data() + static_cast<std::size_t>(r) * width;
      auto line = [&](const char* phase, std::int64_t ar_calls, std::int64_t ar, std::int64_t ag_calls, std::int64_t ag,
                      std::int64_t per, std::int64_t formula) {
        std::printf("%4d %5d  %-7s %16lld %12lld %16lld %12lld %8.1f %16.1f\n", tensor, r, phase,
                    static_cast<long long>(ar_calls), static_cast<long long>(ar), static_cast<long long>(ag_calls),
                    static_cast<long long>(ag), static_cast<double>(ar + ag) / static_cast<double>(per),
                    static_cast<double>(formula) / static_cast<double>(per));
      };
      line("prefill", row[9], row[5], row[10], row[6], prefill_tokens, prefill_formula);
      line("decode", row[11], row[7], row[12], row[8], generated, decode_formula);
    }
    const std::int64_t generate_formula = formula_bytes(config, tensor, prefill_tokens, kPrompts) +
                                          (kGenerateTokens - 1) * formula_bytes(config, tensor, kPrompts, kPrompts);
    std::cout << "# slearn::generate, greedy, " << kGenerateTokens << " new tokens of each of the " << kPrompts
              << " prompts, batch " << kPrompts << " (1 forward prefilling them and picking the first token, then "
              << kGenerateTokens - 1 << " decode steps)\n"
              << "#  T  rank  allreduce_calls  allreduce_B  allgather_calls  allgather_B  other_calls  B/generated_token  "
                 "formula  same_tokens\n";
    for (int r = 0; r < tensor; ++r) {
      const std::int64_t* row = all.data() + static_cast<std::size_t>(r) * width;
      const double per = kPrompts * kGenerateTokens;
      std::printf("%4d %5d %16lld %12lld %16lld %12lld %12lld %18.1f %8.1f  %s\n", tensor, r,
                  static_cast<long long>(row[18]), static_cast<long long>(row[19]), static_cast<long long>(row[20]),
                  static_cast<long long>(row[21]), static_cast<long long>(row[22]),
                  static_cast<double>(row[19] + row[21]) / per, static_cast<double>(generate_formula) / per,
                  row[23] != 0 ? "yes" : "NO");
    }
    const std::int64_t* row0 = all.data();
    const bool matches = row0[5] + row0[6] == prefill_formula && row0[7] + row0[8] == decode_formula;
    std::cout << "# formula: 2 allreduces per layer of tokens x hidden x 4 B, plus one greedy gather of (7 + 2 x rows) "
                 "x 8 B per forward; measured "
              << (tensor == 1 ? "0 (T = 1: no collective)" : (matches ? "equals it on rank 0" : "DIFFERS on rank 0"))
              << "\n"
              << "# gathering whole logit rows instead (Model::forward) would send rows x vocab/T x 4 = "
              << kPrompts * (config.vocab_size / tensor) * 4 << " B per forward of " << kPrompts << " rows\n"
              << "# load: " << row0[13] << " collective calls, " << row0[14] << " B; other calls (broadcast, any, "
              << "barrier) during the forwards: " << row0[15] << "\n"
              << "# greedy tokens of the first prompt: ";
    for (TokenId t : first_sequence) std::cout << t << " ";
    std::cout << std::endl;
  }

  world.barrier();  // every rank is done with the checkpoint before rank 0 removes it (OwnedDirectory)
  if (!owned.path.empty() && keep)
    std::cout << "# kept " << dir.string() << " (--checkpoint " << dir.string() << " reuses it)" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  slearn::MpiSession session(&argc, &argv);
  int rank = 0;
  try {
    auto world = slearn::make_mpi_communicator();
    rank = world->rank();
    return run(*world, argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "bench_tensor_parallel (rank " << rank << "): " << e.what() << std::endl;
    session.abort_job(1);  // the other ranks may be waiting in a collective
    return 1;
  }
}

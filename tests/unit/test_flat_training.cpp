// The trainer's flat state (src/train/flat_adapter.hpp) and the optimizer ops over it: the cpu backend's
// fused AdamW and gradient check are bit-identical to the per-tensor trainer they replaced (its code is kept
// here as the reference), the flat layout is PEFT's adapter layout end to end, and the state goes through a
// checkpoint and back unchanged.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/checkpoint.hpp"
#include "slearn/error.hpp"
#include "slearn/gradient_sum.hpp"
#include "slearn/lora.hpp"
#include "slearn/model_config.hpp"
#include "test_paths.hpp"
#include "train/flat_adapter.hpp"

namespace {

using namespace slearn;
namespace fs = std::filesystem;

// ---- The per-tensor optimizer of the trainer before the flat state (its exact code), the reference. ----
struct ReferenceAdamW {
  OptimizerSettings settings;
  std::vector<std::vector<float>> m, v;
  void update(std::vector<std::vector<float>>& parameters, const std::vector<std::vector<float>>& gradients,
              double lr, std::int64_t step) {
    if (m.empty())
      for (const auto& p : parameters) {
        m.emplace_back(p.size(), 0.0f);
        v.emplace_back(p.size(), 0.0f);
      }
    const double beta1 = settings.adam_beta1, beta2 = settings.adam_beta2;
    const auto decay = static_cast<float>(1.0 - lr * settings.weight_decay);
    const auto one_minus_beta1 = static_cast<float>(1.0 - beta1);
    const auto beta2_f = static_cast<float>(beta2), one_minus_beta2 = static_cast<float>(1.0 - beta2);
    const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    const auto correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
    const auto step_size = static_cast<float>(lr / correction1);
    const auto eps = static_cast<float>(settings.adam_epsilon);
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      float* p = parameters[i].data();
      const float* g = gradients[i].data();
      float* mi = m[i].data();
      float* vi = v[i].data();
      const auto count = static_cast<std::int64_t>(parameters[i].size());
      for (std::int64_t j = 0; j < count; ++j) {
        p[j] *= decay;
        mi[j] += one_minus_beta1 * (g[j] - mi[j]);
        vi[j] = vi[j] * beta2_f + one_minus_beta2 * g[j] * g[j];
        const float denom = std::sqrt(vi[j]) / correction2_sqrt + eps;
        p[j] += -step_size * (mi[j] / denom);
      }
    }
  }
};

double reference_global_norm(const std::vector<std::vector<float>>& gradients) {
  double total = 0;
  for (const auto& g : gradients) {
    double sum = 0;
    for (float x : g) sum += static_cast<double>(x) * x;
    total += sum;
  }
  return std::sqrt(total);
}

void reference_clip(std::vector<std::vector<float>>& gradients, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return;
  const auto factor = static_cast<float>(coefficient);
  for (auto& g : gradients)
    for (float& x : g) x *= factor;
}

ModelConfig tiny_config() { return load_model_config(slearn::testing::fixtures_dir() / "models" / "qwen2-gqa-tied"); }

LoraSettings some_targets() {
  LoraSettings lora;
  lora.r = 4;
  lora.target_modules = {"q_proj", "v_proj", "down_proj"};
  return lora;
}

std::vector<std::vector<float>> per_tensor_values(LoraAdapter& adapter) {
  std::vector<std::vector<float>> values;
  for (const auto& p : adapter.parameters())
    values.emplace_back(p.tensor->f32(), p.tensor->f32() + p.tensor->numel());
  return values;
}

TEST(FlatLayout, IsPeftsAdapterLayoutEndToEnd) {
  const ModelConfig config = tiny_config();
  auto backend = make_cpu_backend();
  LoraAdapter adapter = LoraAdapter::initialize(config, some_targets(), 5, *backend);
  const FlatLayout layout(adapter);
  const auto parameters = adapter.parameters();
  ASSERT_EQ(layout.segments().size(), parameters.size());
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const FlatSegment& s = layout.segments()[i];
    EXPECT_EQ(s.key, parameters[i].key);
    EXPECT_EQ(s.shape, parameters[i].tensor->shape());
    EXPECT_EQ(s.offset, offset);
    EXPECT_EQ(layout.segment_ends()[i], offset + s.count);
    EXPECT_EQ(&layout.segment_of(offset), &s);
    EXPECT_EQ(&layout.segment_of(offset + s.count - 1), &s);
    offset += s.count;
  }
  EXPECT_EQ(layout.elements(), offset);
  EXPECT_EQ(static_cast<std::size_t>(offset), adapter.parameter_count());
  // Layer l's segments begin at layer_begin(l) and hold PEFT's keys for that layer: q, v, down, A before B.
  const std::int64_t per_layer = layout.elements() / config.num_hidden_layers;
  for (std::size_t l = 0; l < static_cast<std::size_t>(config.num_hidden_layers); ++l) {
    EXPECT_EQ(layout.layer_begin(l), static_cast<std::int64_t>(l) * per_layer);
    EXPECT_EQ(layout.segment_of(layout.layer_begin(l)).key, lora_module_path(l, LoraTarget::QProj) + ".lora_A.weight");
  }
  EXPECT_EQ(layout.layer_begin(static_cast<std::size_t>(config.num_hidden_layers)), layout.elements());
  const FlatSegment& second = layout.segments()[1];
  EXPECT_EQ(layout.describe(second.offset + 3),
            second.key + " (element 3 of [" + std::to_string(second.shape[0]) + ", 4])");
  EXPECT_THROW(layout.segment_of(layout.elements()), Error);
  // Views share the flat buffer's memory, shaped as the segments.
  Tensor flat = backend->zeros_f32({layout.elements()}, "flat");
  const auto views = layout.views(flat, "g.");
  ASSERT_EQ(views.size(), parameters.size());
  EXPECT_EQ(views[1].data(), flat.f32() + second.offset);
  EXPECT_EQ(views[1].shape(), second.shape);
  EXPECT_EQ(views[1].name(), "g." + second.key);
}

// Steps of random gradients (some clipped, some not) through the state and through the reference.
TEST(FlatOptimizer, AdamWNormAndClippingAreBitIdenticalToThePerTensorTrainer) {
  const ModelConfig config = tiny_config();
  auto backend = make_cpu_backend();
  LoraAdapter adapter = LoraAdapter::initialize(config, some_targets(), 9, *backend);
  // B starts at zero: give it values so that decay and updates touch every element.
  for (const auto& p : adapter.parameters())
    for (std::int64_t i = 0; i < p.tensor->numel(); ++i)
      if (p.tensor->f32()[i] == 0.0f) p.tensor->f32()[i] = 1e-3f * static_cast<float>(i % 17) - 8e-3f;
  std::vector<std::vector<float>> reference = per_tensor_values(adapter);
  AdapterTrainingState state(*backend, adapter);
  const FlatLayout& layout = state.layout();
  OptimizerSettings settings;
  settings.max_grad_norm = 1.0;
  ReferenceAdamW reference_optimizer{settings, {}, {}};

  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor flat = backend->zeros_f32({layout.elements()}, "gradients");
  for (std::int64_t step = 1; step <= 6; ++step) {
    // Alternate large (clipped) and small (unclipped) gradients.
    const float magnitude = step % 2 == 0 ? 0.5f : 1e-4f;
    std::vector<std::vector<float>> gradients;
    for (const auto& s : layout.segments()) {
      gradients.emplace_back(static_cast<std::size_t>(s.count));
      for (float& g : gradients.back()) g = magnitude * normal(rng);
      std::copy(gradients.back().begin(), gradients.back().end(), flat.f32() + s.offset);
    }
    const double lr = 3e-4 * static_cast<double>(step) / 6.0;
    const Backend::FlatCheck check = backend->check_flat(flat, layout.segment_ends());
    const double norm = reference_global_norm(gradients);
    ASSERT_EQ(check.first_non_finite, -1);
    ASSERT_EQ(std::sqrt(check.sum_squares), norm) << "step " << step;  // the same double, bit for bit
    state.update(flat, adamw_scalars(settings, lr, step, clip_factor(norm, settings.max_grad_norm)));
    reference_clip(gradients, norm, settings.max_grad_norm);
    reference_optimizer.update(reference, gradients, lr, step);
  }
  const std::vector<float> master = state.host_values(state.master());
  const std::vector<float> m = state.host_values(state.first_moments());
  const std::vector<float> v = state.host_values(state.second_moments());
  for (std::size_t i = 0; i < layout.segments().size(); ++i) {
    const auto& s = layout.segments()[i];
    EXPECT_EQ(std::memcmp(master.data() + s.offset, reference[i].data(), reference[i].size() * sizeof(float)), 0) << s.key;
    EXPECT_EQ(std::memcmp(m.data() + s.offset, reference_optimizer.m[i].data(), reference[i].size() * sizeof(float)), 0) << s.key;
    EXPECT_EQ(std::memcmp(v.data() + s.offset, reference_optimizer.v[i].data(), reference[i].size() * sizeof(float)), 0) << s.key;
  }
  // On the cpu backend the adapter's pairs are views of the master: the model trains what AdamW updates.
  const auto parameters = adapter.parameters();
  EXPECT_EQ(parameters[0].tensor->f32(), state.master().f32());
}

TEST(FlatOptimizer, CheckFindsTheFirstNonFiniteElement) {
  auto backend = make_cpu_backend();
  Tensor flat = backend->zeros_f32({1000}, "flat");
  const std::vector<std::int64_t> ends{10, 600, 1000};
  for (std::int64_t i = 0; i < 1000; ++i) flat.f32()[i] = 0.5f;
  auto check = backend->check_flat(flat, ends);
  EXPECT_EQ(check.first_non_finite, -1);
  EXPECT_EQ(check.sum_squares, 250.0);
  flat.f32()[999] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(backend->check_flat(flat, ends).first_non_finite, 999);
  flat.f32()[600] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(backend->check_flat(flat, ends).first_non_finite, 600);
  flat.f32()[0] = -std::numeric_limits<float>::infinity();
  check = backend->check_flat(flat, ends);
  EXPECT_EQ(check.first_non_finite, 0);
  EXPECT_FALSE(std::isfinite(check.sum_squares));
  EXPECT_THROW(backend->check_flat(flat, std::vector<std::int64_t>{10, 600}), Error);
}

TEST(FlatOptimizer, ClipFactorIsTorchs) {
  EXPECT_EQ(clip_factor(0.5, 1.0), 1.0f);
  EXPECT_EQ(clip_factor(4.0, 1.0), static_cast<float>(1.0 / (4.0 + 1e-6)));
  EXPECT_EQ(clip_factor(1e9, 0.0), 1.0f);  // max_grad_norm 0: no clipping
}

TEST(FlatState, GoesThroughACheckpointAndBackUnchanged) {
  const ModelConfig config = tiny_config();
  auto backend = make_cpu_backend();
  LoraAdapter adapter = LoraAdapter::initialize(config, some_targets(), 2, *backend);
  AdapterTrainingState state(*backend, adapter);
  const std::int64_t n = state.layout().elements();
  std::vector<float> m(static_cast<std::size_t>(n)), v(m.size());
  for (std::int64_t i = 0; i < n; ++i) {
    m[static_cast<std::size_t>(i)] = 1e-3f * static_cast<float>(i % 101) - 0.05f;
    v[static_cast<std::size_t>(i)] = 1e-6f * static_cast<float>(i % 89);
  }
  backend->write(state.first_moments(), m);
  backend->write(state.second_moments(), v);

  const fs::path dir = fs::temp_directory_path() / ("slearn_flat_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  TrainState saved;
  saved.step = 3;
  saved.adapter = state.to_arrays(state.master());
  saved.adam_m = state.to_arrays(state.first_moments());
  saved.adam_v = state.to_arrays(state.second_moments());
  saved.fingerprint = "flat test";
  saved.config_yaml = "x: 1\n";
  save_checkpoint(dir, saved, 1);
  const auto restored = load_latest_checkpoint(dir, "flat test");
  fs::remove_all(dir);
  ASSERT_TRUE(restored.has_value());
  // Per tensor with PEFT's keys, as the per-tensor trainer wrote them.
  ASSERT_EQ(restored->adapter.size(), state.layout().segments().size());
  EXPECT_EQ(restored->adapter[0].name, adapter.parameters()[0].key);

  LoraAdapter other = LoraAdapter::initialize(config, some_targets(), 77, *backend);  // other values
  AdapterTrainingState resumed(*backend, other);
  resumed.from_arrays(restored->adapter, resumed.master(), "adapter");
  resumed.from_arrays(restored->adam_m, resumed.first_moments(), "adam_m");
  resumed.from_arrays(restored->adam_v, resumed.second_moments(), "adam_v");
  resumed.refresh_compute_copy();
  EXPECT_EQ(resumed.host_values(resumed.master()), state.host_values(state.master()));
  EXPECT_EQ(resumed.host_values(resumed.first_moments()), m);
  EXPECT_EQ(resumed.host_values(resumed.second_moments()), v);
  EXPECT_EQ(other.parameters()[1].tensor->f32()[0], adapter.parameters()[1].tensor->f32()[0]);

  // Another adapter's arrays are refused, naming the tensor.
  auto wrong = restored->adam_m;
  wrong[2].name = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight";
  try {
    resumed.from_arrays(wrong, resumed.first_moments(), "adam_m");
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("adam_m tensor \"base_model.model.model.layers.0.mlp.up_proj"), std::string::npos)
        << e.what();
  }
  wrong.pop_back();
  EXPECT_THROW(resumed.from_arrays(wrong, resumed.first_moments(), "adam_m"), InputError);
}

TEST(FlatState, SavesThePeftAdapterFromTheMaster) {
  const ModelConfig config = tiny_config();
  auto backend = make_cpu_backend();
  LoraAdapter adapter = LoraAdapter::initialize(config, some_targets(), 4, *backend);
  AdapterTrainingState state(*backend, adapter);
  const fs::path dir = fs::temp_directory_path() / ("slearn_flat_adapter_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  adapter.save(dir, "tiny", state.host_values(state.master()));
  const LoraAdapter loaded = LoraAdapter::load(dir, config, *backend);
  fs::remove_all(dir);
  const auto* pair = loaded.find(1, LoraTarget::VProj);
  ASSERT_NE(pair, nullptr);
  const auto& segment = state.layout().segments()[2 * (3 * 1 + 1)];  // layer 1's v_proj A
  ASSERT_EQ(segment.key, lora_module_path(1, LoraTarget::VProj) + ".lora_A.weight");
  const std::vector<float> master = state.host_values(state.master());
  EXPECT_EQ(std::memcmp(pair->a.f32(), master.data() + segment.offset, static_cast<std::size_t>(segment.count) * 4), 0);
  EXPECT_THROW(adapter.save(dir, "tiny", std::vector<float>(3)), Error);
}

TEST(GradientBuckets, CoverTheBufferFromItsEnd) {
  const auto buckets = gradient_buckets(10, 4);
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(buckets[0], (std::pair<std::int64_t, std::int64_t>{6, 10}));
  EXPECT_EQ(buckets[1], (std::pair<std::int64_t, std::int64_t>{2, 6}));
  EXPECT_EQ(buckets[2], (std::pair<std::int64_t, std::int64_t>{0, 2}));
  EXPECT_TRUE(gradient_buckets(0, 4).empty());
  EXPECT_EQ(gradient_buckets(8, 100).size(), 1u);
  EXPECT_THROW(gradient_buckets(8, 0), Error);
}

}  // namespace

// FlatLayout and AdapterTrainingState (flat_adapter.hpp has the design).
#include "train/flat_adapter.hpp"

#include <algorithm>
#include <cmath>

#include "slearn/error.hpp"

namespace slearn {

FlatLayout::FlatLayout(LoraAdapter& adapter) {
  layer_begin_.assign(adapter.layers() + 1, -1);
  for (const auto& p : adapter.parameters()) {
    FlatSegment segment;
    segment.key = p.key;
    segment.shape = p.tensor->shape();
    segment.offset = elements_;
    segment.count = p.tensor->numel();
    segment.layer = p.layer;
    if (segment.layer >= adapter.layers() ||
        (!segments_.empty() && segment.layer < segments_.back().layer))
      throw Error("flat layout: adapter parameter " + p.key + " is out of layer order");
    if (layer_begin_[segment.layer] < 0) layer_begin_[segment.layer] = elements_;
    elements_ += segment.count;
    ends_.push_back(elements_);
    segments_.push_back(std::move(segment));
  }
  // A layer without parameters begins where the next one does.
  layer_begin_.back() = elements_;
  for (std::size_t l = adapter.layers(); l-- > 0;)
    if (layer_begin_[l] < 0) layer_begin_[l] = layer_begin_[l + 1];
}

std::int64_t FlatLayout::layer_begin(std::size_t layer) const {
  return layer_begin_.at(std::min(layer, layer_begin_.size() - 1));
}

const FlatSegment& FlatLayout::segment_of(std::int64_t element) const {
  if (element < 0 || element >= elements_)
    throw Error("flat layout: element " + std::to_string(element) + " is outside the " + std::to_string(elements_) +
                " parameters");
  const auto it = std::upper_bound(ends_.begin(), ends_.end(), element);
  return segments_[static_cast<std::size_t>(it - ends_.begin())];
}

std::string FlatLayout::describe(std::int64_t element) const {
  const FlatSegment& s = segment_of(element);
  std::string shape;
  for (std::size_t i = 0; i < s.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(s.shape[i]);
  return s.key + " (element " + std::to_string(element - s.offset) + " of [" + shape + "])";
}

std::vector<Tensor> FlatLayout::views(const Tensor& flat, const std::string& prefix) const {
  if (flat.numel() != elements_)
    throw Error("flat layout: tensor " + flat.name() + " " + flat.shape_string() + " does not hold the " +
                std::to_string(elements_) + " parameters");
  const Tensor line = flat.reshaped({elements_});
  std::vector<Tensor> out;
  out.reserve(segments_.size());
  for (const auto& s : segments_) out.push_back(line.slice_rows(s.offset, s.count, prefix + s.key).reshaped(s.shape));
  return out;
}

Backend::AdamWScalars adamw_scalars(const OptimizerSettings& settings, double lr, std::int64_t step,
                                    float grad_scale) {
  // Scalars are formed in double and applied in fp32, as torch's single-tensor AdamW does.
  const double beta1 = settings.adam_beta1, beta2 = settings.adam_beta2;
  Backend::AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * settings.weight_decay);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  s.correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  s.step_size = static_cast<float>(lr / correction1);
  s.eps = static_cast<float>(settings.adam_epsilon);
  s.grad_scale = grad_scale;
  return s;
}

float clip_factor(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coefficient = max_norm / (norm + 1e-6);
  return coefficient >= 1.0 ? 1.0f : static_cast<float>(coefficient);
}

AdapterTrainingState::AdapterTrainingState(Backend& backend, LoraAdapter& adapter)
    : backend_(backend), layout_(adapter) {
  const std::int64_t n = layout_.elements();
  std::vector<float> values(static_cast<std::size_t>(n));
  std::size_t at = 0;
  for (const auto& p : adapter.parameters()) {
    const auto count = static_cast<std::size_t>(p.tensor->numel());
    // The values as made (initialised or read in fp32 on the host); a tensor already on a device is read back.
    if (p.tensor->device() == Device::CPU && p.tensor->dtype() == DType::F32)
      std::copy_n(p.tensor->f32(), count, values.begin() + static_cast<std::ptrdiff_t>(at));
    else
      backend_.to_host(*p.tensor, std::span<float>(values.data() + at, count));
    at += count;
  }
  master_ = backend_.zeros_f32({n}, "adapter.master");
  backend_.write(master_, values);
  compute_ = backend_.compute_copy(master_, "adapter.compute");
  m_ = backend_.zeros_f32({n}, "adam_m");
  v_ = backend_.zeros_f32({n}, "adam_v");
  adapter.bind_parameters(layout_.views(compute_, ""));
}

void AdapterTrainingState::update(const Tensor& gradients, const Backend::AdamWScalars& scalars) {
  backend_.adamw_update(master_, gradients, m_, v_, scalars);
  backend_.refresh_compute_copy(master_, compute_);
}

void AdapterTrainingState::refresh_compute_copy() { backend_.refresh_compute_copy(master_, compute_); }

std::vector<float> AdapterTrainingState::host_values(const Tensor& flat) const {
  std::vector<float> values(static_cast<std::size_t>(flat.numel()));
  backend_.to_host(flat, values);
  return values;
}

std::vector<NamedArray> AdapterTrainingState::to_arrays(const Tensor& flat) const {
  const std::vector<float> values = host_values(flat);
  std::vector<NamedArray> arrays;
  arrays.reserve(layout_.segments().size());
  for (const auto& s : layout_.segments())
    arrays.push_back({s.key, s.shape,
                      std::vector<float>(values.begin() + s.offset, values.begin() + s.offset + s.count)});
  return arrays;
}

void AdapterTrainingState::from_arrays(const std::vector<NamedArray>& arrays, Tensor& flat, const std::string& what) {
  const auto& segments = layout_.segments();
  if (arrays.size() != segments.size())
    throw InputError("checkpoint: " + what + " holds a different set of tensors");
  std::vector<float> values(static_cast<std::size_t>(layout_.elements()));
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (arrays[i].name != segments[i].key || arrays[i].shape != segments[i].shape ||
        static_cast<std::int64_t>(arrays[i].values.size()) != segments[i].count)
      throw InputError("checkpoint: " + what + " tensor \"" + arrays[i].name + "\" does not match \"" +
                       segments[i].key + "\"");
    std::copy(arrays[i].values.begin(), arrays[i].values.end(), values.begin() + segments[i].offset);
  }
  backend_.write(flat, values);
}

}  // namespace slearn

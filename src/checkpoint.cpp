#include "remat/checkpoint.h"

#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <unordered_set>

#include "detail/autocast.h"
#include "remat/logging.h"

namespace remat {

std::vector<torch::Tensor> trainable_parameters(const torch::nn::Module& module) {
  std::vector<torch::Tensor> result;
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    if (p.requires_grad()) result.push_back(p);
  }
  return result;
}

namespace detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Generator state of the CPU and of each CUDA device a region touches.
struct RngState {
  torch::Tensor cpu;
  std::vector<std::pair<c10::DeviceIndex, torch::Tensor>> cuda;
};

torch::Tensor generator_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(at::Generator gen, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

const at::Generator& cuda_generator(c10::DeviceIndex index) {
  return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, index));
}

RngState capture_rng(const std::vector<c10::DeviceIndex>& cuda_devices) {
  RngState state;
  state.cpu = generator_state(at::detail::getDefaultCPUGenerator());
  for (auto index : cuda_devices) {
    state.cuda.emplace_back(index, generator_state(cuda_generator(index)));
  }
  return state;
}

void restore_rng(const RngState& state) {
  set_generator_state(at::detail::getDefaultCPUGenerator(), state.cpu);
  for (const auto& [index, s] : state.cuda) set_generator_state(cuda_generator(index), s);
}

// Sets a recorded RNG state for the lifetime of the guard, then puts back the
// state found on entry, so that a replay does not advance the global streams.
class RngReplayGuard {
 public:
  RngReplayGuard(const RngState* recorded, const std::vector<c10::DeviceIndex>& devices) {
    if (recorded == nullptr) return;
    entry_ = capture_rng(devices);
    restore_rng(*recorded);
  }
  ~RngReplayGuard() {
    if (entry_) restore_rng(*entry_);
  }
  RngReplayGuard(const RngReplayGuard&) = delete;
  RngReplayGuard& operator=(const RngReplayGuard&) = delete;

 private:
  std::optional<RngState> entry_;
};

// The replay computes parameter gradients with torch::autograd::grad and
// hands them to the engine, which accumulates them through the parameters'
// AccumulateGrad nodes. Tensor hooks registered on a parameter live on that
// node and would also fire when the inner grad() captures the gradient; they
// are set aside while it runs, so each hook fires exactly once per backward.
class ParamHookSuspension {
 public:
  explicit ParamHookSuspension(const std::vector<torch::Tensor>& params) {
    for (const auto& p : params) {
      auto acc = torch::autograd::impl::try_get_grad_accumulator(p);
      if (!acc || acc->tensor_pre_hooks().empty()) continue;
      suspended_.emplace_back(acc, std::move(acc->tensor_pre_hooks()));
      acc->tensor_pre_hooks().clear();
    }
  }
  ~ParamHookSuspension() {
    for (auto& [acc, hooks] : suspended_) {
      auto& current = acc->tensor_pre_hooks();
      current.insert(current.begin(), std::make_move_iterator(hooks.begin()),
                     std::make_move_iterator(hooks.end()));
    }
  }
  ParamHookSuspension(const ParamHookSuspension&) = delete;
  ParamHookSuspension& operator=(const ParamHookSuspension&) = delete;

 private:
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>,
                        std::vector<std::unique_ptr<torch::autograd::FunctionPreHook>>>>
      suspended_;
};

struct TensorMeta {
  std::vector<int64_t> sizes;
  at::ScalarType dtype;
  c10::Device device;
};

// Everything the backward needs besides the saved tensors. Stored in the
// node's saved_data as an IValue capsule, so the callable lives exactly as
// long as the node.
struct Region : torch::CustomClassHolder {
  RegionFn fn;
  CheckpointOptions options;
  size_t num_inputs = 0;
  std::vector<bool> input_requires_grad;
  std::vector<c10::DeviceIndex> cuda_devices;
  std::optional<RngState> rng;
  AutocastState autocast;
  std::vector<TensorMeta> outputs;
  // checkpoint_without_output: the replay its hook made before the consumer's
  // backward (inputs with grad on, outputs with their graph), which the
  // region's backward uses instead of replaying again.
  bool early = false;
  std::vector<torch::Tensor> early_inputs, early_outputs;
  bool backward_ran = false;
};

// Replays the region on `inputs` with the forward's RNG and autocast state;
// `grad` says whether to record the graph.
std::vector<torch::Tensor> replay(const Region& region, const std::vector<torch::Tensor>& inputs,
                                  bool grad) {
  RngReplayGuard rng(region.rng ? &*region.rng : nullptr, region.cuda_devices);
  AutocastGuard autocast(region.autocast);
  torch::AutoGradMode grad_mode(grad);
  return region.fn(inputs);
}

constexpr const char* kRegionKey = "remat.region";

std::string describe(const TensorMeta& m) {
  std::ostringstream os;
  os << "shape " << c10::IntArrayRef(m.sizes) << ", " << m.dtype << ", " << m.device;
  return os.str();
}

void check_replay_outputs(const Region& region, const std::vector<torch::Tensor>& outputs) {
  TORCH_CHECK(outputs.size() == region.outputs.size(), "remat::checkpoint: the replay returned ",
              outputs.size(), " tensors but the forward returned ", region.outputs.size(),
              ". A checkpointed region must compute the same thing when replayed; pass "
              "CheckpointOptions().determinism_check(\"none\") to skip this check.");
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& want = region.outputs[i];
    TensorMeta got{outputs[i].sizes().vec(), outputs[i].scalar_type(), outputs[i].device()};
    bool same = got.sizes == want.sizes && got.dtype == want.dtype && got.device == want.device;
    TORCH_CHECK(same, "remat::checkpoint: output ", i, " of the replay has ", describe(got),
                " but the forward's had ", describe(want),
                ". A checkpointed region must compute the same thing when replayed (did it read "
                "state that changed between forward and backward?); pass "
                "CheckpointOptions().determinism_check(\"none\") to skip this check.");
  }
}

// Walks the replayed graph and fails if it reaches a leaf that requires grad
// but is not a node input: its gradient would be dropped silently, because
// the replay asks autograd only for the gradients of inputs and params.
void check_graph_leaves(const std::vector<torch::Tensor>& outputs,
                        const std::vector<torch::Tensor>& allowed) {
  std::unordered_set<const c10::TensorImpl*> known;
  std::unordered_set<const torch::autograd::Node*> seen;
  for (const auto& t : allowed) {
    known.insert(t.unsafeGetTensorImpl());
    // With create_graph the replay runs on the inputs themselves; the graph
    // behind them belongs to the caller and is not walked.
    if (auto fn = t.grad_fn()) seen.insert(fn.get());
  }
  std::vector<torch::autograd::Node*> stack;
  for (const auto& out : outputs) {
    if (!out.requires_grad()) continue;
    if (auto fn = out.grad_fn()) {
      stack.push_back(fn.get());
    } else if (!known.count(out.unsafeGetTensorImpl())) {
      stack.push_back(torch::autograd::impl::grad_accumulator(out).get());
    }
  }
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
      const auto& leaf = acc->variable;
      TORCH_CHECK(known.count(leaf.unsafeGetTensorImpl()) > 0,
                  "remat::checkpoint: the region read a tensor that requires grad (shape ",
                  leaf.sizes(), ", ", leaf.scalar_type(),
                  ") that is neither among its inputs nor its params, so its gradient would be "
                  "lost. Pass it in `params`; checkpoint(module, x) finds a module's parameters "
                  "itself. CheckpointOptions().check_params(false) skips this check.");
      continue;
    }
    for (const auto& edge : node->next_edges()) stack.push_back(edge.function.get());
  }
}

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, at::TensorList params,
                               c10::intrusive_ptr<Region> region) {
    ctx->set_materialize_grads(false);
    std::vector<torch::Tensor> saved(inputs.begin(), inputs.end());
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);

    auto outputs = region->fn(inputs.vec());
    TORCH_CHECK(!outputs.empty(), "remat::checkpoint: the region returned no tensors");
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto& out = outputs[i];
      TORCH_CHECK(out.defined(), "remat::checkpoint: output ", i,
                  " of the region is an undefined tensor; return only defined tensors");
      region->outputs.push_back({out.sizes().vec(), out.scalar_type(), out.device()});
    }
    ctx->saved_data[kRegionKey] = c10::IValue::make_capsule(region);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto region =
        c10::static_intrusive_pointer_cast<Region>(ctx->saved_data.at(kRegionKey).toCapsule());
    auto saved = ctx->get_saved_variables();
    const size_t n = region->num_inputs;
    const size_t total = saved.size();
    variable_list grads(total + 1);  // the trailing slot is the Region argument's

    // With create_graph (double backward) the engine runs this backward in
    // grad mode; the replay then runs on the saved inputs themselves, so the
    // gradients it returns stay connected to the caller's graph.
    const bool create_graph = torch::GradMode::is_enabled();
    const bool early = region->early && !create_graph;
    region->backward_ran = true;
    std::vector<torch::Tensor> inputs;
    std::vector<torch::Tensor> outputs;
    if (early) {
      inputs = std::move(region->early_inputs);
      outputs = std::move(region->early_outputs);
    }
    region->early = false;
    region->early_inputs.clear();
    region->early_outputs.clear();
    std::vector<torch::Tensor> targets;
    std::vector<size_t> target_slots;
    for (size_t i = 0; i < n; ++i) {
      const bool wanted = region->input_requires_grad[i] && ctx->needs_input_grad(i);
      if (!early) {
        auto x = create_graph && wanted ? saved[i] : saved[i].detach();
        if (wanted && !create_graph) x.requires_grad_(true);
        inputs.push_back(std::move(x));
      }
      if (wanted) {
        targets.push_back(inputs[i]);
        target_slots.push_back(i);
      }
    }
    std::vector<torch::Tensor> params;
    for (size_t i = n; i < total; ++i) {
      if (!ctx->needs_input_grad(i)) continue;
      params.push_back(saved[i]);
      targets.push_back(saved[i]);
      target_slots.push_back(i);
    }
    if (targets.empty()) return grads;

    if (!early) outputs = replay(*region, inputs, /*grad=*/true);
    if (region->options.determinism_check() == "default") check_replay_outputs(*region, outputs);
    if (region->options.check_params()) {
      std::vector<torch::Tensor> allowed(inputs.begin(), inputs.end());
      allowed.insert(allowed.end(), saved.begin() + static_cast<std::ptrdiff_t>(n), saved.end());
      check_graph_leaves(outputs, allowed);
    }

    std::vector<torch::Tensor> roots;
    std::vector<torch::Tensor> root_grads;
    for (size_t i = 0; i < outputs.size() && i < grad_outputs.size(); ++i) {
      if (!grad_outputs[i].defined() || !outputs[i].requires_grad()) continue;
      roots.push_back(outputs[i]);
      root_grads.push_back(grad_outputs[i]);
    }
    if (roots.empty()) return grads;

    ParamHookSuspension suspended(params);
    auto computed = torch::autograd::grad(roots, targets, root_grads, /*retain_graph=*/create_graph,
                                          create_graph, /*allow_unused=*/true);
    for (size_t k = 0; k < target_slots.size(); ++k) grads[target_slots[k]] = computed[k];
    return grads;
  }
};

std::vector<c10::DeviceIndex> cuda_devices_of(const std::vector<torch::Tensor>& a,
                                              const std::vector<torch::Tensor>& b) {
  std::vector<c10::DeviceIndex> devices;
  for (const auto* list : {&a, &b}) {
    for (const auto& t : *list) {
      if (!t.defined() || !t.is_cuda()) continue;
      auto index = t.device().index();
      if (std::find(devices.begin(), devices.end(), index) == devices.end()) {
        devices.push_back(index);
      }
    }
  }
  return devices;
}

void validate(const CheckpointOptions& options, const std::vector<torch::Tensor>& inputs) {
  const auto& check = options.determinism_check();
  TORCH_CHECK(check == "default" || check == "none",
              "remat::checkpoint: invalid determinism_check \"", check,
              "\"; valid values are \"default\" and \"none\"");
  for (size_t i = 0; i < inputs.size(); ++i) {
    TORCH_CHECK(inputs[i].defined(), "remat::checkpoint: input ", i,
                " is an undefined tensor; pass only defined tensors as inputs");
  }
}

// checkpoint_without_output's state: the region's outputs, whose memory is
// freed after the consumer ran and put back by the hook below.
struct DiscardedOutputs {
  c10::intrusive_ptr<Region> region;
  std::vector<torch::Tensor> inputs;
  std::vector<torch::Tensor> outputs;
  std::vector<size_t> nbytes;  // per output: its storage's size, 0 = not freed
  bool restored = false;
};

bool shares_storage(const torch::Tensor& t, const std::vector<torch::Tensor>& others) {
  for (const auto& o : others) {
    if (o.defined() && o.has_storage() && t.storage().is_alias_of(o.storage())) return true;
  }
  return false;
}

// Frees the memory of the outputs nobody else should read: each output's
// storage keeps its identity (the consumer's saved tensors point at it) but
// loses its data until restore() allocates it again.
void discard(DiscardedOutputs& state, const std::vector<torch::Tensor>& params,
             const std::vector<torch::Tensor>& results) {
  std::vector<const c10::StorageImpl*> seen;
  for (const auto& out : state.outputs) {
    state.nbytes.push_back(0);
    if (!out.has_storage()) continue;
    auto* impl = out.storage().unsafeGetStorageImpl();
    const bool duplicate = std::find(seen.begin(), seen.end(), impl) != seen.end();
    if (duplicate || impl->allocator() == nullptr || impl->nbytes() == 0 ||
        shares_storage(out, state.inputs) || shares_storage(out, params) ||
        shares_storage(out, results)) {
      continue;
    }
    seen.push_back(impl);
    state.nbytes.back() = impl->nbytes();
    impl->set_data_ptr_noswap(c10::DataPtr(nullptr, impl->device()));
    impl->set_nbytes(0);
  }
}

// Replays the region (recording its graph for the region's backward, unless
// that already ran) and writes its outputs back into the freed tensors.
void restore(DiscardedOutputs& state) {
  if (state.restored) return;
  state.restored = true;
  auto& region = *state.region;
  const bool grad = !region.backward_ran;
  std::vector<torch::Tensor> inputs;
  for (size_t i = 0; i < state.inputs.size(); ++i) {
    auto x = state.inputs[i].detach();
    if (grad && region.input_requires_grad[i]) x.requires_grad_(true);
    inputs.push_back(std::move(x));
  }
  auto outputs = replay(region, inputs, grad);
  if (region.options.determinism_check() == "default") check_replay_outputs(region, outputs);
  torch::NoGradGuard no_grad;
  std::vector<bool> moved(state.outputs.size(), false);
  for (size_t k = 0; k < state.outputs.size(); ++k) {
    if (state.nbytes[k] == 0) continue;
    const auto& out = state.outputs[k];
    const auto& again = outputs[k];
    auto* impl = out.storage().unsafeGetStorageImpl();
    // The replayed output's memory itself, when nothing else holds it (no
    // node of the replayed graph saved it, as the tensor or a view of its
    // memory) and it is laid out alike: the
    // replayed tensor stays only as the root of the region's backward, which
    // reads no data of it.
    if (again.has_storage() && again.use_count() == 1 && again.storage().use_count() == 1 &&
        again.storage().nbytes() == state.nbytes[k] && again.dtype() == out.dtype() &&
        again.storage_offset() == out.storage_offset() && again.sizes() == out.sizes() &&
        again.strides() == out.strides() && again.device() == out.device()) {
      auto* from = again.storage().unsafeGetStorageImpl();
      impl->set_data_ptr_noswap(from->set_data_ptr(c10::DataPtr(nullptr, from->device())));
      from->set_nbytes(0);
      moved[k] = true;
    } else {
      impl->set_data_ptr_noswap(impl->allocator()->allocate(state.nbytes[k]));
    }
    impl->set_nbytes(state.nbytes[k]);
  }
  for (size_t k = 0; k < state.outputs.size(); ++k) {
    const auto& out = state.outputs[k];
    if (moved[k] || !out.has_storage() || out.storage().nbytes() == 0) continue;
    // A fresh tensor over the same memory: writing through it leaves the
    // version counter the consumer's saved tensors check untouched.
    auto alias = torch::empty({0}, out.options());
    alias.set_(out.storage(), out.storage_offset(), out.sizes(), out.strides());
    alias.copy_(outputs[k]);
  }
  if (grad) {
    region.early = true;
    region.early_inputs = std::move(inputs);
    region.early_outputs = std::move(outputs);
  }
  state.outputs.clear();
  state.inputs.clear();
}

class RestoreOutputsHook : public torch::autograd::FunctionPreHook {
 public:
  explicit RestoreOutputsHook(std::shared_ptr<DiscardedOutputs> state) : state_(std::move(state)) {}
  variable_list operator()(const variable_list& grads) override {
    restore(*state_);
    return grads;
  }

 private:
  std::shared_ptr<DiscardedOutputs> state_;
};

}  // namespace

std::vector<torch::Tensor> checkpoint_region(RegionFn fn, const std::vector<torch::Tensor>& inputs,
                                             const std::vector<torch::Tensor>& params,
                                             const CheckpointOptions& options) {
  validate(options, inputs);
  std::vector<torch::Tensor> trainable;
  for (const auto& p : params) {
    if (p.defined() && p.requires_grad()) trainable.push_back(p);
  }
  auto requires_grad = [](const torch::Tensor& t) { return t.requires_grad(); };
  const bool any_grad =
      std::any_of(inputs.begin(), inputs.end(), requires_grad) || !trainable.empty();
  if (!torch::GradMode::is_enabled() || !any_grad) return fn(inputs);

  auto region = c10::make_intrusive<Region>();
  region->fn = std::move(fn);
  region->options = options;
  region->num_inputs = inputs.size();
  for (const auto& x : inputs) region->input_requires_grad.push_back(x.requires_grad());
  region->cuda_devices = cuda_devices_of(inputs, trainable);
  if (options.preserve_rng_state()) region->rng = capture_rng(region->cuda_devices);
  region->autocast = AutocastState::current();
  return CheckpointFunction::apply(at::TensorList(inputs), at::TensorList(trainable),
                                   std::move(region));
}

}  // namespace detail

std::vector<torch::Tensor> checkpoint_without_output(RegionFn region,
                                                     const std::vector<torch::Tensor>& inputs,
                                                     const std::vector<torch::Tensor>& params,
                                                     RegionFn consumer,
                                                     const CheckpointOptions& options) {
  using namespace detail;
  TORCH_CHECK(region && consumer,
              "remat::checkpoint_without_output: the region and the consumer must be callables");
  auto outputs = checkpoint_region(std::move(region), inputs, params, options);
  auto node = outputs.empty() ? nullptr : outputs.front().grad_fn();
  auto* function = dynamic_cast<torch::autograd::CppNode<CheckpointFunction>*>(node.get());
  auto results = consumer(outputs);
  if (function == nullptr) return results;  // not recorded: no grad mode or nothing to train

  auto state = std::make_shared<DiscardedOutputs>();
  state->region = c10::static_intrusive_pointer_cast<Region>(
      function->ctx_.saved_data.at(kRegionKey).toCapsule());
  state->inputs = inputs;
  state->outputs = outputs;
  std::vector<torch::autograd::Node*> hooked;
  bool any = false;
  for (const auto& r : results) {
    auto fn = r.defined() ? r.grad_fn() : nullptr;
    if (!fn || std::find(hooked.begin(), hooked.end(), fn.get()) != hooked.end()) continue;
    hooked.push_back(fn.get());
    fn->add_pre_hook(std::make_unique<RestoreOutputsHook>(state));
    any = true;
  }
  // Without a hook nothing would put the outputs back: keep them.
  if (any) discard(*state, params, results);
  outputs.clear();
  return results;
}

}  // namespace remat

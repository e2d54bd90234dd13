#pragma once

// Template machinery behind the module forms of remat::checkpoint(); include
// remat/checkpoint.h instead of this file.

#include <array>
#include <optional>
#include <tuple>
#include <utility>

namespace remat::detail {

template <typename T>
struct is_tensor_tuple : std::false_type {};
template <typename... Ts>
struct is_tensor_tuple<std::tuple<Ts...>>
    : std::conjunction<std::is_same<std::decay_t<Ts>, torch::Tensor>...> {};

template <typename T>
constexpr bool always_false_v = false;

template <typename R>
std::vector<torch::Tensor> to_tensor_vector(R&& result) {
  using T = std::decay_t<R>;
  if constexpr (std::is_same_v<T, torch::Tensor>) {
    return {std::forward<R>(result)};
  } else if constexpr (std::is_same_v<T, std::vector<torch::Tensor>>) {
    return std::forward<R>(result);
  } else if constexpr (is_tensor_tuple<T>::value) {
    return std::apply([](auto&... t) { return std::vector<torch::Tensor>{t...}; }, result);
  } else {
    static_assert(always_false_v<T>,
                  "remat::checkpoint: the module's forward must return a torch::Tensor, a "
                  "std::vector<torch::Tensor> or a std::tuple of torch::Tensor");
  }
}

template <typename R, size_t... Is>
R tuple_from_vector(std::vector<torch::Tensor>& v, std::index_sequence<Is...>) {
  return R(std::move(v[Is])...);
}

template <typename R>
R from_tensor_vector(std::vector<torch::Tensor> v) {
  if constexpr (std::is_same_v<R, torch::Tensor>) {
    return std::move(v.at(0));
  } else if constexpr (std::is_same_v<R, std::vector<torch::Tensor>>) {
    return v;
  } else {
    return tuple_from_vector<R>(v, std::make_index_sequence<std::tuple_size_v<R>>{});
  }
}

// Moves a tensor argument into `inputs` and returns its slot there, or -1
// for arguments that are passed through unchanged. The stored copy is left
// empty so the replay callable does not keep the tensor alive.
template <typename T>
int take_input(T& arg, std::vector<torch::Tensor>& inputs) {
  if constexpr (std::is_same_v<T, torch::Tensor>) {
    if (!arg.defined()) return -1;
    inputs.push_back(std::exchange(arg, torch::Tensor()));
    return static_cast<int>(inputs.size()) - 1;
  } else if constexpr (std::is_same_v<T, std::optional<torch::Tensor>>) {
    if (!arg.has_value() || !arg->defined()) return -1;
    inputs.push_back(std::exchange(*arg, torch::Tensor()));
    return static_cast<int>(inputs.size()) - 1;
  } else {
    return -1;
  }
}

template <typename T>
void put_input(T& arg, int slot, const std::vector<torch::Tensor>& inputs) {
  if constexpr (std::is_same_v<T, torch::Tensor> ||
                std::is_same_v<T, std::optional<torch::Tensor>>) {
    if (slot >= 0) arg = inputs[slot];
  }
}

template <typename M>
torch::nn::Module& module_of(M& module) {
  return *module;
}

// Packs `module->forward(args...)` into a region (tensor arguments become
// its inputs) and hands it to `run(fn, inputs, params)`, which either
// checkpoints it or runs it some other way (an FSDP unit).
template <typename M, typename Run, typename... Args>
auto region_forward(M& module, Run&& run, const Args&... args) {
  using Result = std::decay_t<decltype(module->forward(args...))>;
  std::tuple<std::decay_t<Args>...> stored(args...);
  std::vector<torch::Tensor> inputs;
  std::array<int, sizeof...(Args)> slots{};
  size_t i = 0;
  std::apply([&](auto&... a) { ((slots[i++] = take_input(a, inputs)), ...); }, stored);

  RegionFn fn = [module, stored = std::move(stored),
                 slots](const std::vector<torch::Tensor>& in) mutable {
    auto call_args = stored;
    size_t j = 0;
    std::apply([&](auto&... a) { (put_input(a, slots[j++], in), ...); }, call_args);
    return to_tensor_vector(
        std::apply([&](auto&... a) { return module->forward(a...); }, call_args));
  };
  auto outputs = run(std::move(fn), inputs, trainable_parameters(module_of(module)));
  return from_tensor_vector<Result>(std::move(outputs));
}

template <typename M, typename... Args>
auto checkpoint_forward(M& module, const CheckpointOptions& options, const Args&... args) {
  return region_forward(
      module,
      [&options](RegionFn fn, const std::vector<torch::Tensor>& inputs,
                 const std::vector<torch::Tensor>& params) {
        return checkpoint_region(std::move(fn), inputs, params, options);
      },
      args...);
}

template <typename M, typename Tuple, size_t... Is>
auto checkpoint_forward_prefix(M& module, const CheckpointOptions& options, Tuple& all,
                               std::index_sequence<Is...>) {
  return checkpoint_forward(module, options, std::get<Is>(all)...);
}

}  // namespace remat::detail

namespace remat {

template <typename M, typename>
torch::Tensor checkpoint(M& module, const torch::Tensor& input, const CheckpointOptions& options) {
  return detail::checkpoint_forward(module, options, input);
}

template <typename M, typename A0, typename A1, typename... Rest, typename>
auto checkpoint(M& module, A0&& a0, A1&& a1, Rest&&... rest) {
  auto all = std::forward_as_tuple(a0, a1, rest...);
  constexpr size_t n = 2 + sizeof...(Rest);
  using Last = std::decay_t<std::tuple_element_t<n - 1, decltype(all)>>;
  if constexpr (std::is_same_v<Last, CheckpointOptions>) {
    return detail::checkpoint_forward_prefix(module, std::get<n - 1>(all), all,
                                             std::make_index_sequence<n - 1>{});
  } else {
    return detail::checkpoint_forward_prefix(module, CheckpointOptions{}, all,
                                             std::make_index_sequence<n>{});
  }
}

}  // namespace remat

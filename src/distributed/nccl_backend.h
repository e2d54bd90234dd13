#pragma once

// The NCCL backend, compiled only where nccl.h and a CUDA LibTorch are found
// (REMAT_HAVE_NCCL); elsewhere create_nccl_backend() throws.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace remat::distributed::detail {

c10::intrusive_ptr<c10d::Backend> create_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                      int64_t rank, int64_t world_size,
                                                      std::chrono::milliseconds timeout);

}  // namespace remat::distributed::detail

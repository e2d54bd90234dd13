#include "nccl_backend.h"

#ifdef REMAT_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace remat::distributed::detail {

c10::intrusive_ptr<c10d::Backend> create_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                      int64_t rank, int64_t world_size,
                                                      std::chrono::milliseconds timeout) {
#ifdef REMAT_HAVE_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(rank),
                                                     static_cast<int>(world_size), options);
#else
  (void)store, (void)rank, (void)world_size, (void)timeout;
  TORCH_CHECK(false,
              "remat::distributed: this build of remat has no NCCL backend (nccl.h or a CUDA "
              "LibTorch was not found when it was configured); use the gloo backend");
#endif
}

}  // namespace remat::distributed::detail

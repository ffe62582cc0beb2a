// tools/torch_cuda.h: the command line starts without LibTorch's CUDA half and loads it for
// --device cuda, before LibTorch's first CUDA query.
#include "tools/torch_cuda.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include "core/error.h"

namespace shardload::tools {
namespace {

bool torch_cuda_loaded() { return dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD) != nullptr; }

TEST(TorchCuda, LoadedOnDemandThenLibTorchAnswersCudaQueries) {
  // The tests link the library, which links LibTorch's CPU half only.
  EXPECT_FALSE(torch_cuda_loaded());
#if SHARDLOAD_TORCH_HAS_CUDA
  EXPECT_EQ(load_torch_cuda(), "");
  EXPECT_TRUE(torch_cuda_loaded());
  // LibTorch's stub hooks (no CUDA library) throw here; the CUDA half's give its runtime's
  // version, with or without a GPU.
  EXPECT_GT(at::detail::getCUDAHooks().versionCUDART(), 0);
  EXPECT_EQ(load_torch_cuda(), "");  // once
  // --device cuda: the local rank's GPU, modulo those visible; none visible is a usage error.
  const int count = static_cast<int>(at::detail::getCUDAHooks().deviceCount());
  if (count > 0) {
    EXPECT_EQ(local_cuda_device(count + 1),
              c10::Device(c10::kCUDA, static_cast<int8_t>(1 % count)));
  } else {
    try {
      local_cuda_device(0);
      ADD_FAILURE() << "local_cuda_device without a GPU returned";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--device cuda: no CUDA device"), std::string::npos)
          << e.what();
    }
  }
#else
  const std::string why = load_torch_cuda();
  EXPECT_NE(why.find("libtorch_cuda.so"), std::string::npos) << why;
#endif
}

}  // namespace
}  // namespace shardload::tools

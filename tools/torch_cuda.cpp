#include "tools/torch_cuda.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>
#include <link.h>

#include <mutex>
#include <string_view>

#include "core/error.h"

namespace shardload::tools {
namespace {

/// The folder of the loaded libtorch_cpu.so ("" when none is loaded).
std::string torch_cpu_folder() {
  std::string folder;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const std::string_view path = info->dlpi_name ? info->dlpi_name : "";
        const auto slash = path.rfind('/');
        if (slash == std::string_view::npos || path.substr(slash + 1) != "libtorch_cpu.so")
          return 0;
        *static_cast<std::string*>(out) = std::string(path.substr(0, slash));
        return 1;
      },
      &folder);
  return folder;
}

}  // namespace

std::string load_torch_cuda() {
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    if (dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD)) return;  // linked or loaded already
    const std::string folder = torch_cpu_folder();
    const std::string path = (folder.empty() ? std::string() : folder + "/") + "libtorch_cuda.so";
    // RTLD_GLOBAL: its symbols serve libraries loaded after it, as when it is linked.
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) return;
    const char* why = dlerror();
    error = "cannot load LibTorch's CUDA library " + path + ": " + (why ? why : "unknown error");
  });
  return error;
}

c10::Device local_cuda_device(int local_rank) {
  if (const std::string why = load_torch_cuda(); !why.empty()) {
    throw UsageError("--device cuda: " + why);
  }
  const auto& hooks = at::detail::getCUDAHooks();
  const int count = hooks.hasCUDA() ? static_cast<int>(hooks.deviceCount()) : 0;
  if (count <= 0) {
    throw UsageError("--device cuda: no CUDA device is visible (or LibTorch has no CUDA)");
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank % count));
}

}  // namespace shardload::tools

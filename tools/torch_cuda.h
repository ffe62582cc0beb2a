// LibTorch's CUDA half, loaded when a command asks for a GPU. The command line links LibTorch's
// CPU half only (libtorch_cpu.so): libtorch_cuda.so and the CUDA libraries it pulls in (cuBLAS,
// cuDNN, cuFFT, ...) made every command start in 0.45 s of CPU and map 480 MiB, where the CPU
// half alone takes 0.28 s and 115 MiB — and the hostile-file and oracle tests start the command
// line thousands of times. A LibTorch program that links all of LibTorch (as `${TORCH_LIBRARIES}`
// does) or a Python process (`import torch`) has it loaded already, and this does nothing there.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace shardload::tools {

/// Loads libtorch_cuda.so from beside the libtorch_cpu.so this process runs, once, so that
/// CUDA tensors and LibTorch's CUDA queries (at::hasCUDA, torch::cuda::is_available) work. Call
/// it before any such query: LibTorch settles which CUDA hooks it has on the first one. Returns
/// an empty string on success (or when it was loaded already), else why not (the path tried and
/// the loader's message).
std::string load_torch_cuda();

/// The GPU of a rank whose local rank is `local_rank` (modulo the devices visible, as launchers
/// pin ranks to GPUs), for `--device cuda`: loads LibTorch's CUDA half first. Throws UsageError
/// naming the option when that fails, LibTorch has no CUDA or no device is visible.
c10::Device local_cuda_device(int local_rank);

}  // namespace shardload::tools

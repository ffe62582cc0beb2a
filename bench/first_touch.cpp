// What the first touch of fresh memory costs on this machine: the staging arena of a load is
// fresh memory, written once per message. Maps 64 MiB (or argv[1] MiB) anonymously, touches one
// byte per 4 KiB page, then writes it all again (warm), with 4 KiB pages and with MADV_HUGEPAGE
// (as loader/transfer/staging_arena.cpp asks), `rounds` times each, alternating; prints each.
// Usage: build/bench/first_touch [MiB] [rounds]
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

void one(size_t bytes, bool huge) {
  const size_t page = size_t{2} << 20;
  void* map =
      mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  auto* at = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(map) + page - 1) & ~(page - 1));
  if (huge) madvise(at, bytes, MADV_HUGEPAGE);
  auto t = std::chrono::steady_clock::now();
  for (size_t i = 0; i < bytes; i += 4096) at[i] = 1;
  const double first = ms_since(t);
  t = std::chrono::steady_clock::now();
  std::memset(at, 2, bytes);
  const double warm = ms_since(t);
  std::printf("%-14s first touch %7.1f ms (%5.2f GB/s)   warm write %5.1f ms\n",
              huge ? "MADV_HUGEPAGE" : "4 KiB pages", first,
              static_cast<double>(bytes) / first / 1e6, warm);
  munmap(map, bytes + page);
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  for (int r = 0; r < rounds; ++r) {
    one(mib << 20, true);
    one(mib << 20, false);
  }
}

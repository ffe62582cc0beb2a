// The AVX2 XXH3 kernel (checksum_kernel.h); this file is compiled with -mavx2.
#define SHARDLOAD_XXH3_KERNEL kAvx2
#define SHARDLOAD_XXH3_NAME "avx2"
#include "io/checksum_kernel.inc"

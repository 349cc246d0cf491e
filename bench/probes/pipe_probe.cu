// Pipe probe: what one H100 SM sub-partition sustains for the three instruction streams of the
// portable forward's tile loop (HMMA.16816 from mma.sync, MUFU.EX2, FP32 FFMA), alone and mixed,
// in one warp or split over warps. Prints cycles per warp instruction per sub-partition.
//   nvcc -arch=sm_90 -O3 -o pipe_probe pipe_probe.cu && ./pipe_probe
// Each warp runs kIters iterations of (H HMMA, M MUFU, F FFMA), every stream in 8 independent
// chains so that latency never limits throughput. Warps of a CTA are split into two roles
// (role = (warp / 4) & 1) so that "HMMA in one warp, MUFU in the other" can be measured too.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
  std::printf("%s: %s\n", #x, cudaGetErrorString(e)); std::exit(1); } } while (0)

constexpr int kIters = 2048;

template <int H, int M, int F>
__device__ __forceinline__ void body(float (&acc)[8][4], float (&x)[8], float (&y)[8], unsigned a0, unsigned b0) {
#pragma unroll
  for (int i = 0; i < H; ++i) {
    float* c = acc[i % 8];
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a0 ^ 1u), "r"(a0 ^ 2u), "r"(a0 ^ 3u), "r"(b0), "r"(b0 ^ 1u));
  }
#pragma unroll
  for (int i = 0; i < M; ++i) {
    float& v = x[i % 8];
    asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(v) : "f"(-fabsf(v)));
  }
#pragma unroll
  for (int i = 0; i < F; ++i) {
    float& v = y[i % 8];
    asm volatile("fma.rn.f32 %0, %0, %1, %2;" : "+f"(v) : "f"(0.999f), "f"(1e-3f));
  }
}

// Role 0 warps run (H0, M0, F0) per iteration, role 1 warps (H1, M1, F1).
template <int H0, int M0, int F0, int H1, int M1, int F1>
__global__ void probe(long long* cycles, float* sink, int flag) {
  float acc[8][4] = {};
  float x[8], y[8];
  for (int i = 0; i < 8; ++i) { x[i] = 0.5f + i * threadIdx.x * 1e-3f; y[i] = x[i]; }
  const unsigned a0 = 0x3c003c00u ^ threadIdx.x, b0 = 0x38003800u + threadIdx.x;
  const int role = (threadIdx.x / 128) & 1;
  __syncthreads();
  const long long t0 = clock64();
  for (int it = 0; it < kIters; ++it) {
    if (role == 0) body<H0, M0, F0>(acc, x, y, a0, b0);
    else body<H1, M1, F1>(acc, x, y, a0, b0);
  }
  __syncthreads();
  const long long t1 = clock64();
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += acc[i][0] + acc[i][1] + acc[i][2] + acc[i][3] + x[i] + y[i];
  if (flag) sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

template <int H0, int M0, int F0, int H1, int M1, int F1>
void run(const char* name, int warps_per_cta, int sms) {
  long long* d_cycles; float* d_sink;
  CHECK(cudaMalloc(&d_cycles, sms * sizeof(long long)));
  CHECK(cudaMalloc(&d_sink, sms * warps_per_cta * 32 * sizeof(float)));
  auto k = probe<H0, M0, F0, H1, M1, F1>;
  for (int rep = 0; rep < 2; ++rep) k<<<sms, warps_per_cta * 32>>>(d_cycles, d_sink, 0);
  CHECK(cudaDeviceSynchronize());
  long long* h = new long long[sms];
  CHECK(cudaMemcpy(h, d_cycles, sms * sizeof(long long), cudaMemcpyDeviceToHost));
  double mean = 0; for (int i = 0; i < sms; ++i) mean += double(h[i]) / sms;
  // Per sub-partition: warps_per_cta / 4 warps, split evenly between the roles when 8+ warps.
  const int wps = warps_per_cta / 4;
  const int w0 = warps_per_cta >= 8 ? wps / 2 : wps, w1 = wps - w0;
  const double hmma = double(kIters) * (H0 * w0 + H1 * w1);
  const double mufu = double(kIters) * (M0 * w0 + M1 * w1);
  const double ffma = double(kIters) * (F0 * w0 + F1 * w1);
  const double cyc = mean;
  std::printf("%-44s warps/SMSP %d  cycles/iter %8.1f  | per instr: HMMA %5.2f MUFU %5.2f FFMA %5.2f | issue share %.2f\n",
              name, wps, cyc / kIters, hmma > 0 ? cyc / hmma : 0.0, mufu > 0 ? cyc / mufu : 0.0,
              ffma > 0 ? cyc / ffma : 0.0, (hmma + mufu + ffma) / cyc);
  delete[] h;
  CHECK(cudaFree(d_cycles)); CHECK(cudaFree(d_sink));
}

int main() {
  cudaDeviceProp prop; CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs; one CTA per SM; cycles are SM clocks per sub-partition\n", prop.name, sms);
  // Alone (2 warps per sub-partition: 8-warp CTAs, both roles the same).
  run<16, 0, 0, 16, 0, 0>("HMMA alone", 8, sms);
  run<0, 16, 0, 0, 16, 0>("MUFU alone", 8, sms);
  run<0, 0, 16, 0, 0, 16>("FFMA alone", 8, sms);
  run<16, 0, 0, 16, 0, 0>("HMMA alone, 1 warp/SMSP", 4, sms);
  run<0, 16, 0, 0, 16, 0>("MUFU alone, 1 warp/SMSP", 4, sms);
  // Mixed in every warp (the tile loop's shape: per 128x128 tile 160 HMMA, 132 MUFU, ~500 FP32).
  run<16, 16, 0, 16, 16, 0>("HMMA+MUFU 1:1, same warp", 8, sms);
  run<16, 16, 0, 16, 16, 0>("HMMA+MUFU 1:1, same warp, 1 warp/SMSP", 4, sms);
  run<16, 0, 32, 16, 0, 32>("HMMA+FFMA 1:2, same warp", 8, sms);
  run<0, 16, 32, 0, 16, 32>("MUFU+FFMA 1:2, same warp", 8, sms);
  run<16, 16, 48, 16, 16, 48>("HMMA+MUFU+FFMA 1:1:3, same warp", 8, sms);
  run<16, 16, 48, 16, 16, 48>("HMMA+MUFU+FFMA 1:1:3, 4 warps/SMSP", 16, sms);
  // Split roles: one warp per sub-partition does HMMA, the other MUFU (+FFMA): ping-pong's ideal.
  run<16, 0, 0, 0, 16, 0>("HMMA warp | MUFU warp", 8, sms);
  run<16, 0, 0, 0, 16, 48>("HMMA warp | MUFU+FFMA 1:3 warp", 8, sms);
  run<32, 0, 0, 0, 16, 48>("HMMA x2 warp | MUFU+FFMA 1:3 warp", 8, sms);
  return 0;
}

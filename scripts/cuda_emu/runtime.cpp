// The CUDA emulator's scheduler (scripts/cuda_emu/README.md): every thread of a block is a ucontext fiber with
// its own stack; a fiber runs until it waits at a barrier (__syncthreads, a warp collective) or returns, and the
// scheduler resumes the others round-robin. A round in which no fiber arrived, passed a barrier or finished is
// a deadlock (threads waiting at different barriers): reported with the kernel's coordinates, then abort().
#include <ATen/cuda/CUDAContext.h>
#include <fastconv_cuda_emu.h>
#include <c10/util/Exception.h>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace fcemu {

thread_local dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSharedLimit = 48 * 1024;  // dynamic bytes a kernel may take without the opt-in
constexpr unsigned int kMaxThreads = 1024;

struct Barrier {
  unsigned int generation = 0;
  unsigned int arrived = 0;
};

struct Fiber {
  ucontext_t context;
  dim3 index;
  bool done = false;
  char* stack = nullptr;  // kStackBytes plus a guard page below
};

struct Warp {
  Barrier barrier;
  unsigned int live_mask = 0;
  alignas(16) unsigned char slots[32][16];
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier barrier;
  unsigned int live = 0;
  unsigned long long events = 0;  // arrivals, releases, exits: what the deadlock check watches
  int current = -1;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> shared;  // dynamic shared memory (poisoned per block)
  const char* waiting_at = "";
};

thread_local Block* g_block = nullptr;
std::map<std::string, int> g_max_dynamic_shared;
std::string g_launch_error;

cudaDeviceProp make_properties() {
  cudaDeviceProp p{};
  const char* sms = std::getenv("FASTCONV_EMU_SMS");
  p.multiProcessorCount = sms ? std::atoi(sms) : 132;  // an H100/H200 SXM
  p.sharedMemPerBlock = kStaticSharedLimit;
  p.sharedMemPerBlockOptin = 232448;  // sm_90: 227 KiB
  p.maxThreadsPerBlock = kMaxThreads;
  p.warpSize = 32;
  p.major = 9;
  p.minor = 0;
  return p;
}

std::vector<char*>& stack_pool() {
  static thread_local std::vector<char*> pool;
  return pool;
}

char* stack_for(size_t i) {
  auto& pool = stack_pool();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (pool.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "cuda emulator: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);  // overflowing a fiber's stack faults instead of corrupting another's
    pool.push_back(static_cast<char*>(p) + page);
  }
  return pool[i];
}

// FASTCONV_EMU_ORDER=reverse runs a block's threads from the last to the first between barriers. A thread that
// reads shared memory another thread writes without a barrier between them sees the old bytes (or the poison)
// in one of the two orders, so running the tests in both finds most missing __syncthreads.
bool reverse_order() {
  static const bool reverse = [] {
    const char* order = std::getenv("FASTCONV_EMU_ORDER");
    return order != nullptr && std::string(order) == "reverse";
  }();
  return reverse;
}

void yield_to_scheduler() {
  Block& b = *g_block;
  swapcontext(&b.fibers[b.current].context, &b.scheduler);
}

void fiber_entry() {
  Block& b = *g_block;
  (*b.body)();
  const int i = b.current;
  b.fibers[i].done = true;
  b.live -= 1;
  b.warps[i / 32].live_mask &= ~(1u << (i % 32));
  b.events += 1;
  // returning resumes uc_link: the scheduler
}

// Wait until every live participant has arrived. Exited threads do not count (as on sm_70+).
void wait_barrier(Barrier& barrier, const std::function<unsigned int()>& expected, const char* what) {
  Block& b = *g_block;
  const unsigned int generation = barrier.generation;
  barrier.arrived += 1;
  b.events += 1;
  while (barrier.generation == generation) {
    if (barrier.arrived >= expected()) {
      barrier.generation += 1;
      barrier.arrived = 0;
      b.events += 1;
      break;
    }
    b.waiting_at = what;
    yield_to_scheduler();
  }
}

void run_block(const LaunchConfig& config, const dim3& block_index, const std::function<void()>& body,
               Block& b) {
  const unsigned int threads = config.block.x * config.block.y * config.block.z;
  b.fibers.assign(threads, Fiber{});
  b.warps.assign((threads + 31) / 32, Warp{});
  b.barrier = Barrier{};
  b.live = threads;
  b.body = &body;
  for (unsigned int w = 0; w < b.warps.size(); ++w) {
    const unsigned int lanes = std::min(32u, threads - 32 * w);
    b.warps[w].live_mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  }
  std::fill(b.shared.begin(), b.shared.end(), 0xff);  // NaN in every float type: unwritten reads show
  g_block_idx = block_index;
  for (unsigned int i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f.index = dim3(i % config.block.x, (i / config.block.x) % config.block.y, i / (config.block.x * config.block.y));
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stack_for(i);
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  while (b.live > 0) {
    const unsigned long long before = b.events;
    for (unsigned int k = 0; k < threads; ++k) {
      const unsigned int i = reverse_order() ? threads - 1 - k : k;
      if (b.fibers[i].done) continue;
      b.current = static_cast<int>(i);
      g_thread_idx = b.fibers[i].index;
      swapcontext(&b.scheduler, &b.fibers[i].context);
    }
    if (b.live > 0 && b.events == before) {
      std::fprintf(stderr,
                   "cuda emulator: deadlock in block (%u, %u, %u) of grid (%u, %u, %u), block (%u, %u, %u): "
                   "%u live threads wait and none can pass (last wait: %s); threads of one block reach "
                   "different barriers\n",
                   block_index.x, block_index.y, block_index.z, config.grid.x, config.grid.y, config.grid.z,
                   config.block.x, config.block.y, config.block.z, b.live, b.waiting_at);
      std::abort();
    }
  }
  b.current = -1;
}

}  // namespace

cudaDeviceProp* device_properties() {
  static cudaDeviceProp properties = make_properties();
  return &properties;
}

void run_grid(const LaunchConfig& config, const char* kernel, const std::function<void()>& body) {
  TORCH_CHECK(g_block == nullptr, "cuda emulator: a kernel launched another kernel");
  const std::string where = std::string(" (") + kernel + ")";
  const unsigned int threads = config.block.x * config.block.y * config.block.z;
  const auto fail = [&where](std::string message) {
    g_launch_error = std::move(message) + where;
  };
  if (threads == 0 || threads > kMaxThreads || config.block.z > 64) {
    return fail("invalid block (" + std::to_string(config.block.x) + ", " + std::to_string(config.block.y) +
                ", " + std::to_string(config.block.z) + ")");
  }
  if (config.grid.x == 0 || config.grid.y == 0 || config.grid.z == 0 || config.grid.x > 2147483647u ||
      config.grid.y > 65535 || config.grid.z > 65535) {
    return fail("invalid grid (" + std::to_string(config.grid.x) + ", " + std::to_string(config.grid.y) + ", " +
                std::to_string(config.grid.z) + ")");
  }
  if (config.shared_bytes > kStaticSharedLimit) {
    const auto it = g_max_dynamic_shared.find(kernel);
    const int allowed = it == g_max_dynamic_shared.end() ? static_cast<int>(kStaticSharedLimit) : it->second;
    if (config.shared_bytes > static_cast<size_t>(allowed)) {
      return fail(std::to_string(config.shared_bytes) + " bytes of dynamic shared memory without the opt-in "
                  "(cudaFuncAttributeMaxDynamicSharedMemorySize is " + std::to_string(allowed) + ")");
    }
  }
  Block block;
  block.shared.assign(config.shared_bytes, 0xff);
  g_block = &block;
  g_grid_dim = config.grid;
  g_block_dim = config.block;
  for (unsigned int z = 0; z < config.grid.z; ++z) {
    for (unsigned int y = 0; y < config.grid.y; ++y) {
      for (unsigned int x = 0; x < config.grid.x; ++x) run_block(config, dim3(x, y, z), body, block);
    }
  }
  g_block = nullptr;
}

void* dynamic_shared() {
  Block& b = *g_block;
  return b.shared.empty() ? nullptr : b.shared.data();
}

void sync_block() {
  Block& b = *g_block;
  wait_barrier(b.barrier, [&b] { return b.live; }, "__syncthreads");
}

void sync_warp(unsigned int mask) {
  Block& b = *g_block;
  Warp& w = b.warps[b.current / 32];
  wait_barrier(w.barrier, [&w, mask] { return static_cast<unsigned int>(__builtin_popcount(w.live_mask & mask)); },
               "a warp collective");
}

unsigned char* warp_slot(int lane) {
  Block& b = *g_block;
  TORCH_CHECK(lane >= 0 && lane < 32, "cuda emulator: shuffle from lane ", lane);
  return b.warps[b.current / 32].slots[lane];
}

int lane_id() { return g_block->current % 32; }

cudaError_t func_set_attribute(const char* kernel, cudaFuncAttribute attribute, int bytes) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (bytes > static_cast<int>(device_properties()->sharedMemPerBlockOptin)) {
    g_launch_error = "cudaFuncSetAttribute: " + std::to_string(bytes) + " bytes of dynamic shared memory";
    return 1;
  }
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

void launch_check() {
  if (g_launch_error.empty()) return;
  std::string message = std::move(g_launch_error);
  g_launch_error.clear();
  TORCH_CHECK(false, "CUDA error (emulated): ", message);
}

void check_error(cudaError_t error, const char* expression) {
  if (error == cudaSuccess) return;
  std::string message = std::move(g_launch_error);
  g_launch_error.clear();
  TORCH_CHECK(false, "CUDA error (emulated) in ", expression, ": ", message);
}

}  // namespace fcemu

// vitjax: oneDNN's fp32 matmul as an XLA FFI custom call on the CPU.
//
//   c[i] = alpha * (op(a[i]) @ op(b[i])),  op(x) = x or x^T,  a, b, c: [batch, rows, cols], row-major
//
// alpha (attention's 1/sqrt(head_dim)) scales the fp32 accumulator in oneDNN's epilogue, as
// a separate multiply would, without another pass over c.
//
// The transposes are strides, never copies: oneDNN reads a transposed operand in place, which
// XLA's CPU backend does not (it materialises x^T for a weight gradient x^T g).
//
// Threads. The matmul runs on XLA's own intra-op thread pool, the threads that run XLA's fused
// kernels, never on threads of its own: it is cut into tiles (over the batch, the rows or the
// columns of c), each tile one single-threaded oneDNN matmul, and the calling thread and up to
// (pool threads - 1) helper tasks take tiles from a shared counter until none is left. The caller
// never waits for a helper that has not started (it takes that tile itself), so a pool busy with
// other kernels costs parallelism, never a deadlock; and there are never more busy threads than
// the pool has. (oneDNN's own OpenMP team would be a second set of threads beside XLA's, which
// XLA keeps busy with independent kernels at the same time: measured, that oversubscription
// cost more than a thread handoff saved.)
// Numerics: fp32 math is forced (a user's ONEDNN_DEFAULT_FPMATH_MODE=BF16 does not apply here);
// each thread has its own scratchpad. A tile's result does not depend on how tiles are shared
// out, so results are the same from run to run.
// Built on first use by vitjax/kernels/onednn.py.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;

struct Problem {
  int64_t batch, m, k, n;
  bool transpose_a, transpose_b;
  float alpha;
};

// One tile of c: batches [b0, b0 + nb), rows [m0, m0 + nm), columns [n0, n0 + nn).
struct Tile {
  int64_t b0, nb, m0, nm, n0, nn;
};

// Strides (in elements) of the logical [batch, rows, cols] views of a, b and c.
struct Strides {
  dims a, b, c;
};

Strides strides_of(const Problem& p) {
  dims a = p.transpose_a ? dims{p.m * p.k, 1, p.m} : dims{p.m * p.k, p.k, 1};
  dims b = p.transpose_b ? dims{p.k * p.n, 1, p.k} : dims{p.k * p.n, p.n, 1};
  return {a, b, dims{p.m * p.n, p.n, 1}};
}

struct TileMatmul {
  dnnl::memory::desc a, b, c, scratchpad;
  dnnl::matmul primitive;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Primitives are made once per tile shape and shared: executing one is thread-safe with a
// scratchpad per thread.
const TileMatmul& tile_matmul(const Problem& p, const Tile& t) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, float>, std::unique_ptr<TileMatmul>> made;
  // The strides depend on the whole problem's m, k, n; the tile's own sizes on nb, nm, nn.
  auto key = std::make_tuple(t.nb, t.nm, t.nn, p.m, p.k, p.n, p.transpose_a, p.transpose_b, p.alpha);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = made.find(key);
  if (found != made.end()) return *found->second;
  Strides s = strides_of(p);
  auto f32 = dnnl::memory::data_type::f32;
  dnnl::memory::desc a({t.nb, t.nm, p.k}, f32, s.a), b({t.nb, p.k, t.nn}, f32, s.b), c({t.nb, t.nm, t.nn}, f32, s.c);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  if (p.alpha != 1.0f) {
    dnnl::post_ops scale;
    scale.append_eltwise(dnnl::algorithm::eltwise_linear, p.alpha, 0.0f);
    attr.set_post_ops(scale);
  }
  dnnl::matmul::primitive_desc pd(cpu_engine(), a, b, c, attr);
  auto mm = std::make_unique<TileMatmul>(TileMatmul{a, b, c, pd.scratchpad_desc(), dnnl::matmul(pd)});
  return *made.emplace(key, std::move(mm)).first->second;
}

// Runs one tile on the calling thread alone (oneDNN's OpenMP team of one).
void run_tile(const Problem& p, const Tile& t, float* a, float* b, float* c) {
  thread_local bool single = false;
  thread_local std::vector<uint8_t> scratch;
  if (!single) {
    omp_set_num_threads(1);  // this thread's OpenMP regions (oneDNN's) run on it alone
    single = true;
  }
  const TileMatmul& mm = tile_matmul(p, t);
  Strides s = strides_of(p);
  int64_t a_offset = t.b0 * s.a[0] + t.m0 * s.a[1];
  int64_t b_offset = t.b0 * s.b[0] + t.n0 * s.b[2];
  int64_t c_offset = t.b0 * s.c[0] + t.m0 * s.c[1] + t.n0;
  if (scratch.size() < mm.scratchpad.get_size()) scratch.resize(mm.scratchpad.get_size());
  auto& engine = cpu_engine();
  dnnl::memory am(mm.a, engine, a + a_offset), bm(mm.b, engine, b + b_offset), cm(mm.c, engine, c + c_offset);
  dnnl::memory sm(mm.scratchpad, engine, scratch.data());
  dnnl::stream stream(engine);
  mm.primitive.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}});
  stream.wait();
}

// Cuts c into about `parts` tiles: over the batch when it has that many entries, else over the
// longer of rows and columns, in multiples of 8 (whole vector registers for oneDNN's kernels).
std::vector<Tile> tiles_of(const Problem& p, int64_t parts) {
  std::vector<Tile> tiles;
  auto cut = [&](int64_t size, int64_t unit, auto make) {
    int64_t count = std::max<int64_t>(1, std::min(parts, size / unit));
    int64_t step = (size + count - 1) / count;
    step = (step + unit - 1) / unit * unit;
    for (int64_t start = 0; start < size; start += step) make(start, std::min(step, size - start));
  };
  if (p.batch >= parts) {
    cut(p.batch, 1, [&](int64_t s, int64_t len) { tiles.push_back({s, len, 0, p.m, 0, p.n}); });
  } else if (p.m >= p.n) {
    cut(p.m, 8, [&](int64_t s, int64_t len) { tiles.push_back({0, p.batch, s, len, 0, p.n}); });
  } else {
    cut(p.n, 8, [&](int64_t s, int64_t len) { tiles.push_back({0, p.batch, 0, p.m, s, len}); });
  }
  return tiles;
}

// The tiles of one call, taken one at a time by whichever thread asks next.
struct SharedWork {
  Problem problem;
  std::vector<Tile> tiles;
  float *a, *b, *c;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;  // guards error and the wake-up
  std::condition_variable finished;
  std::string error;

  // Takes and runs tiles until none is left.
  void work() {
    for (int64_t i; (i = next.fetch_add(1)) < static_cast<int64_t>(tiles.size());) {
      std::string failure;
      try {
        run_tile(problem, tiles[i], a, b, c);
      } catch (const dnnl::error& e) {
        failure = std::string("oneDNN: ") + e.what();
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "unknown C++ exception";
      }
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure.empty() && error.empty()) error = failure;
      if (done.fetch_add(1) + 1 == static_cast<int64_t>(tiles.size())) finished.notify_all();
    }
  }

  void wait() {
    for (int spin = 0; spin < 4000 && done.load() < static_cast<int64_t>(tiles.size()); ++spin) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();  // a helper's last tile is usually microseconds away: spin briefly first
#else
      std::this_thread::yield();
#endif
    }
    std::unique_lock<std::mutex> lock(mutex);
    finished.wait(lock, [&] { return done.load() == static_cast<int64_t>(tiles.size()); });
  }
};

constexpr int64_t kTilesPerThread = 2;  // slack for a thread that frees up mid-call (1 and 4 measured the same)

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                      bool transpose_a, bool transpose_b, float alpha) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 3 || bd.size() != 3 || cd.size() != 3) {
    return ffi::Error::InvalidArgument("onednn_matmul: operands and result must be [batch, rows, cols]");
  }
  Problem p{ad[0], transpose_a ? ad[2] : ad[1], transpose_a ? ad[1] : ad[2], transpose_b ? bd[1] : bd[2],
            transpose_a, transpose_b, alpha};
  int64_t b_k = transpose_b ? bd[2] : bd[1];
  if (bd[0] != p.batch || b_k != p.k || cd[0] != p.batch || cd[1] != p.m || cd[2] != p.n) {
    return ffi::Error::InvalidArgument("onednn_matmul: shapes do not match");
  }
  if (p.batch == 0 || p.m == 0 || p.n == 0) return ffi::Error::Success();
  if (p.k == 0) {  // an empty sum
    std::memset(c->typed_data(), 0, sizeof(float) * p.batch * p.m * p.n);
    return ffi::Error::Success();
  }
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  auto shared = std::make_shared<SharedWork>();
  shared->problem = p;
  shared->tiles = tiles_of(p, threads * kTilesPerThread);
  shared->a = a.typed_data();
  shared->b = b.typed_data();
  shared->c = c->typed_data();
  int64_t helpers = std::min<int64_t>(threads, shared->tiles.size()) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared] { shared->work(); });
  shared->work();
  shared->wait();
  if (!shared->error.empty()) return ffi::Error::Internal("onednn_matmul: " + shared->error);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitjaxOnednnMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b")
                                  .Attr<float>("alpha"));

// The oneDNN version this library runs against (a process may hold another copy; onednn.py checks).
extern "C" __attribute__((visibility("default"))) int VitjaxOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

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
#include <functional>
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
  int64_t count = 0;
  std::function<void(int64_t)> run_tile;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;  // guards error and the wake-up
  std::condition_variable finished;
  std::string error;

  // Takes and runs tiles until none is left.
  void work() {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      std::string failure;
      try {
        run_tile(i);
      } catch (const dnnl::error& e) {
        failure = std::string("oneDNN: ") + e.what();
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "unknown C++ exception";
      }
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure.empty() && error.empty()) error = failure;
      if (done.fetch_add(1) + 1 == count) finished.notify_all();
    }
  }

  void wait() {
    for (int spin = 0; spin < 4000 && done.load() < count; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();  // a helper's last tile is usually microseconds away: spin briefly first
#else
      std::this_thread::yield();
#endif
    }
    std::unique_lock<std::mutex> lock(mutex);
    finished.wait(lock, [&] { return done.load() == count; });
  }
};

constexpr int64_t kTilesPerThread = 2;  // slack for a thread that frees up mid-call (1 and 4 measured the same)

// Runs run_tile(0 .. count - 1) on the calling thread and up to (pool threads - 1) helper tasks;
// returns the first tile's error, or "" when all succeeded.
std::string run_shared(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run_tile) {
  auto shared = std::make_shared<SharedWork>();
  shared->count = count;
  shared->run_tile = std::move(run_tile);
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t helpers = std::min<int64_t>(threads, count) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared] { shared->work(); });
  shared->work();
  shared->wait();
  return shared->error;
}

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
  std::vector<Tile> tiles = tiles_of(p, threads * kTilesPerThread);
  float *a_data = a.typed_data(), *b_data = b.typed_data(), *c_data = c->typed_data();
  std::string error = run_shared(pool, tiles.size(), [&](int64_t i) { run_tile(p, tiles[i], a_data, b_data, c_data); });
  if (!error.empty()) return ffi::Error::Internal("onednn_matmul: " + error);
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Attention: out[b, t, h] = softmax(alpha * q[b, t, h] . k[b, :, h]) v[b, :, h], one fused call.
//
// q, k and v come straight from the projections' outputs, [batch, tokens, slots, heads, head_dim]
// arrays (DeiT's qkv: slots 0, 1, 2 of one array; TNT's qk and v), and the result is written as
// [batch, tokens, heads, head_dim], ready for the output projection: no transposes to and from a
// heads-major layout over whole arrays. Each tile (one head, a run of batch entries, a run of query
// rows) gathers its q, k^T and v into per-thread buffers, computes its attention weights there
// (small enough to stay in cache), takes their softmax in place and multiplies them by v: the
// [batch, heads, tokens, tokens] weights never go to memory. The three steps are single-threaded
// oneDNN primitives (matmul with the scale in its epilogue, softmax_accurate, matmul), shared out
// over XLA's threads as the matmul's tiles are.

// One operand's [batch, tokens, slots, heads, head_dim] layout and the slot it reads.
struct Packed {
  int64_t batch_stride, token_stride, offset;  // offset: of slot `slot`, head 0
};

struct AttentionProblem {
  int64_t batch, tokens, heads, head_dim;
  Packed q, k, v;
  float alpha;
};

// One tile: head h, batch entries [b0, b0 + nb), query rows [m0, m0 + nm).
struct AttentionTile {
  int64_t h, b0, nb, m0, nm;
};

struct AttentionPrimitives {
  dnnl::memory::desc q, k, scores, v, out;
  dnnl::matmul scores_matmul, out_matmul;
  dnnl::softmax_forward softmax;
  dnnl::memory::desc scores_scratch, rows, softmax_scratch, out_scratch;
};

dnnl::primitive_attr strict_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  return attr;
}

// Copies nb x rows rows of d floats from a strided operand into a dense [nb, rows, d] buffer.
void gather(const float* src, int64_t nb, int64_t batch_stride, int64_t rows, int64_t row_stride, int64_t d, float* dst) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + (b * rows + r) * d, src + b * batch_stride + r * row_stride, d * sizeof(float));
}

// The inverse of gather: a dense [nb, rows, d] buffer into a strided result.
void scatter(const float* src, int64_t nb, int64_t batch_stride, int64_t rows, int64_t row_stride, int64_t d, float* dst) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + b * batch_stride + r * row_stride, src + (b * rows + r) * d, d * sizeof(float));
}

const AttentionPrimitives& attention_primitives(const AttentionProblem& p, int64_t nb, int64_t nm) {
  static std::mutex mutex;
  // The tile's operands are dense (gathered by run_attention_tile): its sizes and the scale say it all.
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, float>;
  static std::map<Key, std::unique_ptr<AttentionPrimitives>> made;
  Key key{nb, nm, p.tokens, p.head_dim, p.alpha};
  std::lock_guard<std::mutex> lock(mutex);
  auto found = made.find(key);
  if (found != made.end()) return *found->second;
  auto f32 = dnnl::memory::data_type::f32;
  int64_t t = p.tokens, d = p.head_dim;
  dnnl::memory::desc q({nb, nm, d}, f32, dims{nm * d, d, 1});
  dnnl::memory::desc k({nb, d, t}, f32, dims{t * d, 1, d});  // k^T: k's rows read as columns
  dnnl::memory::desc scores({nb, nm, t}, f32, dims{nm * t, t, 1});
  dnnl::memory::desc rows({nb * nm, t}, f32, dims{t, 1});
  dnnl::memory::desc v({nb, t, d}, f32, dims{t * d, d, 1});
  dnnl::memory::desc out({nb, nm, d}, f32, dims{nm * d, d, 1});
  auto scaled = strict_attr();
  if (p.alpha != 1.0f) {
    dnnl::post_ops scale;
    scale.append_eltwise(dnnl::algorithm::eltwise_linear, p.alpha, 0.0f);
    scaled.set_post_ops(scale);
  }
  dnnl::matmul::primitive_desc scores_pd(cpu_engine(), q, k, scores, scaled);
  dnnl::softmax_forward::primitive_desc softmax_pd(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                   dnnl::algorithm::softmax_accurate, rows, rows, 1, strict_attr());
  dnnl::matmul::primitive_desc out_pd(cpu_engine(), scores, v, out, strict_attr());
  auto prims = std::make_unique<AttentionPrimitives>(AttentionPrimitives{
      q, k, scores, v, out, dnnl::matmul(scores_pd), dnnl::matmul(out_pd), dnnl::softmax_forward(softmax_pd),
      scores_pd.scratchpad_desc(), rows, softmax_pd.scratchpad_desc(), out_pd.scratchpad_desc()});
  return *made.emplace(key, std::move(prims)).first->second;
}

void run_attention_tile(const AttentionProblem& p, const AttentionTile& t, const float* q, const float* k, const float* v,
                        float* out) {
  thread_local bool single = false;
  thread_local std::vector<uint8_t> scratch;
  thread_local std::vector<float> scores;
  if (!single) {
    omp_set_num_threads(1);
    single = true;
  }
  const AttentionPrimitives& prims = attention_primitives(p, t.nb, t.nm);
  size_t scratch_bytes = std::max({prims.scores_scratch.get_size(), prims.softmax_scratch.get_size(), prims.out_scratch.get_size()});
  if (scratch.size() < scratch_bytes) scratch.resize(scratch_bytes);
  size_t score_count = static_cast<size_t>(t.nb * t.nm * p.tokens);
  if (scores.size() < score_count) scores.resize(score_count);
  int64_t head = t.h * p.head_dim;
  auto& engine = cpu_engine();
  int64_t out_token = p.heads * p.head_dim;
  const float* qp = q + p.q.offset + head + t.b0 * p.q.batch_stride + t.m0 * p.q.token_stride;
  const float* kp = k + p.k.offset + head + t.b0 * p.k.batch_stride;
  const float* vp = v + p.v.offset + head + t.b0 * p.v.batch_stride;
  float* op = out + head + t.b0 * p.tokens * out_token + t.m0 * out_token;
  // The tile's q, k and v, gathered dense into a per-thread buffer (rows of head_dim floats), and
  // its result scattered back: oneDNN runs its fastest matmul kernels on dense operands only, and
  // reading strided operands in place measured slower than the copies (DeiT-tiny, batch 8).
  thread_local std::vector<float> stage;
  int64_t d = p.head_dim;
  size_t need = static_cast<size_t>(t.nb * (2 * t.nm * d + 2 * p.tokens * d));
  if (stage.size() < need) stage.resize(need);
  float* qs = stage.data();
  float* ks = qs + t.nb * t.nm * d;
  float* vs = ks + t.nb * p.tokens * d;
  float* os = vs + t.nb * p.tokens * d;
  gather(qp, t.nb, p.q.batch_stride, t.nm, p.q.token_stride, d, qs);
  gather(kp, t.nb, p.k.batch_stride, p.tokens, p.k.token_stride, d, ks);
  gather(vp, t.nb, p.v.batch_stride, p.tokens, p.v.token_stride, d, vs);
  dnnl::memory qm(prims.q, engine, qs), km(prims.k, engine, ks), vm(prims.v, engine, vs), om(prims.out, engine, os);
  dnnl::memory sm(prims.scores, engine, scores.data());
  dnnl::memory rows(prims.rows, engine, scores.data());  // the same weights, as [rows, tokens] for the softmax
  dnnl::memory pad1(prims.scores_scratch, engine, scratch.data()), pad2(prims.softmax_scratch, engine, scratch.data()),
      pad3(prims.out_scratch, engine, scratch.data());
  dnnl::stream stream(engine);
  prims.scores_matmul.execute(stream, {{DNNL_ARG_SRC, qm}, {DNNL_ARG_WEIGHTS, km}, {DNNL_ARG_DST, sm}, {DNNL_ARG_SCRATCHPAD, pad1}});
  prims.softmax.execute(stream, {{DNNL_ARG_SRC, rows}, {DNNL_ARG_DST, rows}, {DNNL_ARG_SCRATCHPAD, pad2}});
  prims.out_matmul.execute(stream, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, vm}, {DNNL_ARG_DST, om}, {DNNL_ARG_SCRATCHPAD, pad3}});
  stream.wait();
  scatter(os, t.nb, p.tokens * out_token, t.nm, out_token, d, op);
}

constexpr int64_t kScoreBytesPerTile = 128 * 1024;  // a tile's attention weights stay in L2

// Cuts the work into tiles: every head on its own; batch entries grouped so that a tile's
// weights fit kScoreBytesPerTile and there are at least `parts` tiles; query rows cut (in
// multiples of 8) only when heads x batch is fewer than `parts`.
std::vector<AttentionTile> attention_tiles(const AttentionProblem& p, int64_t parts) {
  int64_t units = p.heads * p.batch;
  int64_t row_chunks = units >= parts ? 1 : std::min<int64_t>((parts + units - 1) / units, (p.tokens + 7) / 8);
  int64_t rows = (p.tokens + row_chunks - 1) / row_chunks;
  rows = (rows + 7) / 8 * 8;
  int64_t per_batch_bytes = rows * p.tokens * static_cast<int64_t>(sizeof(float));
  int64_t nb = std::max<int64_t>(1, std::min<int64_t>(kScoreBytesPerTile / per_batch_bytes, p.batch));
  int64_t wanted_batch_chunks = (parts + p.heads - 1) / p.heads;
  nb = std::min(nb, std::max<int64_t>(1, (p.batch + wanted_batch_chunks - 1) / wanted_batch_chunks));
  std::vector<AttentionTile> tiles;
  for (int64_t b0 = 0; b0 < p.batch; b0 += nb) {
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t m0 = 0; m0 < p.tokens; m0 += rows) {
        tiles.push_back({h, b0, std::min(nb, p.batch - b0), m0, std::min(rows, p.tokens - m0)});
      }
    }
  }
  return tiles;
}

ffi::Error AttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                         ffi::ResultBuffer<ffi::F32> out, int64_t q_slot, int64_t k_slot, int64_t v_slot, float alpha) {
  auto od = out->dimensions();
  if (od.size() != 4) return ffi::Error::InvalidArgument("onednn_attention: the result must be [batch, tokens, heads, head_dim]");
  AttentionProblem p{od[0], od[1], od[2], od[3], {}, {}, {}, alpha};
  auto packed = [&](ffi::Buffer<ffi::F32>& x, int64_t slot, Packed& layout) {
    auto xd = x.dimensions();
    if (xd.size() != 5 || xd[0] != p.batch || xd[1] != p.tokens || xd[3] != p.heads || xd[4] != p.head_dim || slot < 0 ||
        slot >= xd[2]) {
      return false;
    }
    int64_t token = xd[2] * p.heads * p.head_dim;
    layout = {p.tokens * token, token, slot * p.heads * p.head_dim};
    return true;
  };
  if (!packed(q, q_slot, p.q) || !packed(k, k_slot, p.k) || !packed(v, v_slot, p.v)) {
    return ffi::Error::InvalidArgument("onednn_attention: q, k, v must be [batch, tokens, slots, heads, head_dim] with a valid slot");
  }
  if (p.batch == 0 || p.tokens == 0 || p.heads == 0 || p.head_dim == 0) return ffi::Error::Success();
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  std::vector<AttentionTile> tiles = attention_tiles(p, threads * kTilesPerThread);
  const float *qd = q.typed_data(), *kd = k.typed_data(), *vd = v.typed_data();
  float* outd = out->typed_data();
  std::string error = run_shared(pool, tiles.size(), [&](int64_t i) { run_attention_tile(p, tiles[i], qd, kd, vd, outd); });
  if (!error.empty()) return ffi::Error::Internal("onednn_attention: " + error);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitjaxOnednnAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("q_slot")
                                  .Attr<int64_t>("k_slot")
                                  .Attr<int64_t>("v_slot")
                                  .Attr<float>("alpha"));

// The oneDNN version this library runs against (a process may hold another copy; onednn.py checks).
extern "C" __attribute__((visibility("default"))) int VitjaxOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

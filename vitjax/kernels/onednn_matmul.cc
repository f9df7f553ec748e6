// vitjax: oneDNN's fp32 matmul as an XLA FFI custom call on the CPU.
//
//   c[i] = op(a[i]) @ op(b[i]),  op(x) = x or x^T,  a, b, c: [batch, rows, cols], row-major
//
// The transposes are strides, never copies: oneDNN reads a transposed operand in place, which
// XLA's CPU backend does not (it materialises x^T for a weight gradient x^T g).
//
// Threads. XLA may run independent custom calls at once on its thread pool, and each thread
// that enters an OpenMP region gets its own team of workers (N cores: up to N^2 threads). So
// every matmul runs on one executor thread, made when the library is loaded (on the loading
// thread's CPU set, never a pinned XLA worker's), and the calling XLA thread waits for it: one
// OpenMP team, one matmul at a time, each on every core.
// Numerics: fp32 math is forced (a user's ONEDNN_DEFAULT_FPMATH_MODE=BF16 does not apply here),
// and each primitive's scratchpad is ours, one buffer reused by the one executor.
// Built on first use by vitjax/kernels/onednn.py.
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t batch, m, k, n;
  bool transpose_a, transpose_b;
  auto key() const { return std::make_tuple(batch, m, k, n, transpose_a, transpose_b); }
};

dnnl::memory::desc row_major(int64_t batch, int64_t rows, int64_t cols, bool transposed) {
  // The logical [batch, rows, cols] view of a row-major [batch, rows, cols] array, or of a
  // row-major [batch, cols, rows] array read transposed.
  dnnl::memory::dims strides = transposed ? dnnl::memory::dims{rows * cols, 1, rows} : dnnl::memory::dims{rows * cols, cols, 1};
  return dnnl::memory::desc({batch, rows, cols}, dnnl::memory::data_type::f32, strides);
}

struct Matmul {
  dnnl::memory::desc a, b, c, scratchpad;
  dnnl::matmul primitive;
};

// Runs every matmul on one thread, in the order they are handed in.
class Executor {
 public:
  Executor() : engine_(dnnl::engine::kind::cpu, 0), thread_([this] { loop(); }) {}
  ~Executor() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  // Runs `work` on the executor thread; returns its error message ("" on success).
  std::string run(const std::function<void(Executor&)>& work) {
    Job job{&work};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(&job);
    }
    wake_.notify_all();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return job.finished; });
    return job.error;
  }

  const Matmul& matmul_for(const Shape& s) {  // executor thread only
    auto found = made_.find(s.key());
    if (found != made_.end()) return found->second;
    auto a = row_major(s.batch, s.m, s.k, s.transpose_a);
    auto b = row_major(s.batch, s.k, s.n, s.transpose_b);
    auto c = row_major(s.batch, s.m, s.n, false);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
    dnnl::matmul::primitive_desc pd(engine_, a, b, c, attr);
    return made_.emplace(s.key(), Matmul{a, b, c, pd.scratchpad_desc(), dnnl::matmul(pd)}).first->second;
  }

  void execute(const Matmul& mm, void* a, void* b, void* c) {  // executor thread only
    if (scratch_.size() < mm.scratchpad.get_size()) scratch_.resize(mm.scratchpad.get_size());
    dnnl::memory am(mm.a, engine_, a), bm(mm.b, engine_, b), cm(mm.c, engine_, c);
    dnnl::memory sm(mm.scratchpad, engine_, scratch_.data());
    dnnl::stream stream(engine_);
    mm.primitive.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}});
    stream.wait();
  }

 private:
  struct Job {
    const std::function<void(Executor&)>* work;
    bool finished = false;
    std::string error;
  };

  void loop() {
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = queue_.front();
        queue_.erase(queue_.begin());
      }
      std::string error;
      try {
        (*job->work)(*this);
      } catch (const dnnl::error& e) {
        error = std::string("oneDNN: ") + e.what();
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = "unknown C++ exception";
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        job->error = error;
        job->finished = true;
      }
      done_.notify_all();
    }
  }

  dnnl::engine engine_;
  std::map<decltype(Shape{}.key()), Matmul> made_;
  std::vector<uint8_t> scratch_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<Job*> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once everything above exists
};

Executor* executor = nullptr;

__attribute__((constructor)) void start_executor() {  // at dlopen, on the loading thread
  try {
    executor = new Executor();
  } catch (...) {
    executor = nullptr;  // every call then reports it
  }
}

ffi::Error MatmulImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                      bool transpose_a, bool transpose_b) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 3 || bd.size() != 3 || cd.size() != 3) {
    return ffi::Error::InvalidArgument("onednn_matmul: operands and result must be [batch, rows, cols]");
  }
  Shape s{ad[0], transpose_a ? ad[2] : ad[1], transpose_a ? ad[1] : ad[2], transpose_b ? bd[1] : bd[2],
          transpose_a, transpose_b};
  int64_t b_k = transpose_b ? bd[2] : bd[1];
  if (bd[0] != s.batch || b_k != s.k || cd[0] != s.batch || cd[1] != s.m || cd[2] != s.n) {
    return ffi::Error::InvalidArgument("onednn_matmul: shapes do not match");
  }
  if (s.batch == 0 || s.m == 0 || s.n == 0) return ffi::Error::Success();
  if (s.k == 0) {  // an empty sum
    std::memset(c->typed_data(), 0, sizeof(float) * s.batch * s.m * s.n);
    return ffi::Error::Success();
  }
  if (executor == nullptr) return ffi::Error::Internal("onednn_matmul: the executor thread could not be started");
  float *pa = a.typed_data(), *pb = b.typed_data(), *pc = c->typed_data();
  std::function<void(Executor&)> work = [&](Executor& ex) { ex.execute(ex.matmul_for(s), pa, pb, pc); };
  std::string error = executor->run(work);
  if (!error.empty()) return ffi::Error::Internal("onednn_matmul: " + error);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitjaxOnednnMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));

// The oneDNN version this library runs against (a process may hold another copy; onednn.py checks).
extern "C" __attribute__((visibility("default"))) int VitjaxOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

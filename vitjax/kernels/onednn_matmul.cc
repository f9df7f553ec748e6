// vitjax: oneDNN's fp32 matmul as an XLA FFI custom call on the CPU.
//
//   c[i] = op(a[i]) @ op(b[i]),  op(x) = x or x^T,  a, b, c: [batch, rows, cols], row-major
//
// The transposes are strides, never copies: oneDNN reads a transposed operand in place, which
// XLA's CPU backend does not (it materialises x^T for a weight gradient x^T g). One oneDNN
// primitive per shape, made once and kept; oneDNN runs it on its OpenMP threads.
// Built on first use by vitjax/kernels/onednn.py.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t batch, m, k, n;
  bool transpose_a, transpose_b;
  auto key() const { return std::make_tuple(batch, m, k, n, transpose_a, transpose_b); }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::memory::desc row_major(int64_t batch, int64_t rows, int64_t cols, bool transposed) {
  // The logical [batch, rows, cols] view of a row-major [batch, rows, cols] array, or of a
  // row-major [batch, cols, rows] array read transposed.
  dnnl::memory::dims strides = transposed ? dnnl::memory::dims{rows * cols, 1, rows} : dnnl::memory::dims{rows * cols, cols, 1};
  return dnnl::memory::desc({batch, rows, cols}, dnnl::memory::data_type::f32, strides);
}

struct Matmul {
  dnnl::memory::desc a, b, c;
  dnnl::matmul primitive;
};

const Matmul& matmul_for(const Shape& s) {
  static std::mutex mutex;
  static std::map<decltype(s.key()), Matmul> made;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = made.find(s.key());
  if (found != made.end()) return found->second;
  auto a = row_major(s.batch, s.m, s.k, s.transpose_a);
  auto b = row_major(s.batch, s.k, s.n, s.transpose_b);
  auto c = row_major(s.batch, s.m, s.n, false);
  dnnl::matmul::primitive_desc pd(cpu_engine(), a, b, c);
  return made.emplace(s.key(), Matmul{a, b, c, dnnl::matmul(pd)}).first->second;
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
  try {
    const Matmul& mm = matmul_for(s);
    const auto& engine = cpu_engine();
    dnnl::memory am(mm.a, engine, a.typed_data()), bm(mm.b, engine, b.typed_data()), cm(mm.c, engine, c->typed_data());
    dnnl::stream stream(engine);
    mm.primitive.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_matmul: ") + e.what());
  }
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

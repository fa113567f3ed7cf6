// XLA FFI handlers that run 2-D convolutions through oneDNN on the CPU.
//
// Why: XLA:CPU lowers convolutions to Eigen kernels that reach ~1/3 of what oneDNN's
// JIT-generated AVX-512 kernels do on the same cores (benchmarks/results/attacks_speed.md),
// and depthwise convolutions to a generic loop (~80x slower). The semantics are exactly
// lax.conv_general_dilated with dimension numbers (NHWC, HWIO, NHWC), float32, no lhs dilation.
//
// Geometry attribute "geo" (int64[18]):
//   N H W C | KH KW I O | OH OW | sh sw | pad_top pad_bottom pad_left pad_right | dh dw
// with I = C / groups (the HWIO kernel's input-feature dimension) and dilation 1 = none.
#include <array>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using Geo = std::array<int64_t, 18>;

struct GeoHash {
  size_t operator()(const Geo& g) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : g) h = (h ^ static_cast<size_t>(v)) * 1099511628211ull;
    return h;
  }
};

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Descs {
  memory::desc src, wei, dst;
  memory::dims strides, dilation, pad_l, pad_r;
};

// Plain NHWC activations; the kernel described in place as HWIO through strides, so that
// oneDNN reads JAX's buffer without a copy when it can.
Descs MakeDescs(const Geo& g) {
  const int64_t N = g[0], H = g[1], W = g[2], C = g[3], KH = g[4], KW = g[5], I = g[6],
                O = g[7], OH = g[8], OW = g[9];
  const int64_t G = C / I;
  Descs d;
  d.src = memory::desc({N, C, H, W}, memory::data_type::f32, memory::format_tag::nhwc);
  d.dst = memory::desc({N, O, OH, OW}, memory::data_type::f32, memory::format_tag::nhwc);
  if (G == 1) {
    d.wei = memory::desc({O, I, KH, KW}, memory::data_type::f32,
                         memory::dims{1, O, KW * I * O, I * O});
  } else {
    d.wei = memory::desc({G, O / G, I, KH, KW}, memory::data_type::f32,
                         memory::dims{O / G, 1, O, KW * I * O, I * O});
  }
  d.strides = {g[10], g[11]};
  d.pad_l = {g[12], g[14]};
  d.pad_r = {g[13], g[15]};
  d.dilation = {g[16] - 1, g[17] - 1};  // oneDNN counts the gaps, XLA the spacing
  return d;
}

memory::desc Any(const memory::desc& m) {
  return memory::desc(m.get_dims(), memory::data_type::f32, memory::format_tag::any);
}

// A user-managed scratchpad (allocated per call) keeps one primitive safe to run from several
// threads at once: XLA runs the partitions of a sharded CPU program concurrently.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Descs& d, dnnl::prop_kind kind) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), kind, dnnl::algorithm::convolution_direct, d.src, Any(d.wei), d.dst, d.strides,
      d.dilation, d.pad_l, d.pad_r, UserScratchpad());
}

// One compiled primitive and the reorder of the user's HWIO kernel into the layout it wants.
struct Plan {
  dnnl::primitive prim;
  memory::desc src, wei, dst, user_wei, scratchpad;
  bool reorder_weights = false;
  dnnl::reorder weight_reorder;
};

std::mutex cache_mutex;
std::unordered_map<Geo, std::shared_ptr<Plan>, GeoHash> forward_plans, backward_plans;

std::shared_ptr<Plan> GetPlan(const Geo& g, bool backward_data) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& cache = backward_data ? backward_plans : forward_plans;
  auto it = cache.find(g);
  if (it != cache.end()) return it->second;
  Descs d = MakeDescs(g);
  auto plan = std::make_shared<Plan>();
  plan->user_wei = d.wei;
  if (backward_data) {
    auto hint = ForwardPd(d, dnnl::prop_kind::forward_training);
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, d.src, Any(d.wei), d.dst, d.strides,
        d.dilation, d.pad_l, d.pad_r, hint, UserScratchpad());
    plan->prim = dnnl::convolution_backward_data(pd);
    plan->src = pd.diff_src_desc();
    plan->wei = pd.weights_desc();
    plan->dst = pd.diff_dst_desc();
    plan->scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = ForwardPd(d, dnnl::prop_kind::forward_inference);
    plan->prim = dnnl::convolution_forward(pd);
    plan->src = pd.src_desc();
    plan->wei = pd.weights_desc();
    plan->dst = pd.dst_desc();
    plan->scratchpad = pd.scratchpad_desc();
  }
  plan->reorder_weights = plan->wei != d.wei;
  if (plan->reorder_weights) {
    plan->weight_reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(Engine(), d.wei, Engine(), plan->wei));
  }
  cache.emplace(g, plan);
  return plan;
}

// Backward weights: the weight gradient dW = sum over the batch of x (*) dy, written into the
// user's HWIO buffer (through a reorder when oneDNN prefers a blocked layout).
struct WeightsPlan {
  dnnl::convolution_backward_weights prim;
  memory::desc src, diff_wei, diff_dst, user_wei, scratchpad;
  bool reorder_weights = false;
  dnnl::reorder weight_reorder;
};

std::unordered_map<Geo, std::shared_ptr<WeightsPlan>, GeoHash> weights_plans;

std::shared_ptr<WeightsPlan> GetWeightsPlan(const Geo& g) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = weights_plans.find(g);
  if (it != weights_plans.end()) return it->second;
  Descs d = MakeDescs(g);
  auto plan = std::make_shared<WeightsPlan>();
  auto hint = ForwardPd(d, dnnl::prop_kind::forward_training);
  dnnl::convolution_backward_weights::primitive_desc pd(
      Engine(), dnnl::algorithm::convolution_direct, d.src, Any(d.wei), d.dst, d.strides,
      d.dilation, d.pad_l, d.pad_r, hint, UserScratchpad());
  plan->prim = dnnl::convolution_backward_weights(pd);
  plan->src = pd.src_desc();
  plan->diff_wei = pd.diff_weights_desc();
  plan->diff_dst = pd.diff_dst_desc();
  plan->user_wei = d.wei;
  plan->scratchpad = pd.scratchpad_desc();
  plan->reorder_weights = plan->diff_wei != d.wei;
  if (plan->reorder_weights) {
    plan->weight_reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(Engine(), plan->diff_wei, Engine(), d.wei));
  }
  weights_plans.emplace(g, plan);
  return plan;
}

ffi::Error RunWeights(const WeightsPlan& plan, void* src, void* diff_dst, void* diff_wei) {
  dnnl::engine& eng = Engine();
  dnnl::stream stream(eng);
  memory src_m(plan.src, eng, src), dst_m(plan.diff_dst, eng, diff_dst);
  memory user_w(plan.user_wei, eng, diff_wei);
  memory w_m = plan.reorder_weights ? memory(plan.diff_wei, eng) : user_w;
  memory scratch(plan.scratchpad, eng);
  plan.prim.execute(stream, {{DNNL_ARG_SRC, src_m},
                             {DNNL_ARG_DIFF_DST, dst_m},
                             {DNNL_ARG_DIFF_WEIGHTS, w_m},
                             {DNNL_ARG_SCRATCHPAD, scratch}});
  if (plan.reorder_weights) plan.weight_reorder.execute(stream, w_m, user_w);
  stream.wait();
  return ffi::Error::Success();
}

ffi::Error CheckGeometry(ffi::Span<const int64_t> geo, const ffi::AnyBuffer::Dimensions& a,
                         const ffi::AnyBuffer::Dimensions& w, const ffi::AnyBuffer::Dimensions& b,
                         bool backward_data, Geo* g) {
  if (geo.size() != 18) return ffi::Error::InvalidArgument("geo must hold 18 integers");
  for (int i = 0; i < 18; ++i) (*g)[i] = geo[i];
  const Geo& v = *g;
  if (a.size() != 4 || w.size() != 4 || b.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN convolution expects rank-4 NHWC/HWIO buffers");
  }
  // backward data: a = d(output) [N, OH, OW, O], b = d(input) [N, H, W, C]
  const auto& in = backward_data ? b : a;
  const auto& out = backward_data ? a : b;
  bool ok = in[0] == v[0] && in[1] == v[1] && in[2] == v[2] && in[3] == v[3] && w[0] == v[4] &&
            w[1] == v[5] && w[2] == v[6] && w[3] == v[7] && out[0] == v[0] && out[1] == v[8] &&
            out[2] == v[9] && out[3] == v[7] && v[6] > 0 && v[3] % v[6] == 0;
  if (!ok) return ffi::Error::InvalidArgument("buffer shapes do not match the geometry");
  return ffi::Error::Success();
}

ffi::Error Run(const Plan& plan, void* src, void* wei, void* dst, bool backward_data) {
  dnnl::engine& eng = Engine();
  dnnl::stream stream(eng);
  memory src_m(plan.src, eng, src), dst_m(plan.dst, eng, dst), user_w(plan.user_wei, eng, wei);
  memory w_m = user_w;
  if (plan.reorder_weights) {
    w_m = memory(plan.wei, eng);
    plan.weight_reorder.execute(stream, user_w, w_m);
  }
  memory scratch(plan.scratchpad, eng);
  if (backward_data) {
    plan.prim.execute(stream, {{DNNL_ARG_DIFF_DST, dst_m},
                               {DNNL_ARG_WEIGHTS, w_m},
                               {DNNL_ARG_DIFF_SRC, src_m},
                               {DNNL_ARG_SCRATCHPAD, scratch}});
  } else {
    plan.prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m},
                               {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
  }
  stream.wait();
  return ffi::Error::Success();
}

// Forward: a = x [N,H,W,C], out = y [N,OH,OW,O]. Backward data: a = dy, out = dx.
ffi::Error Handle(bool backward_data, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w,
                  ffi::Result<ffi::Buffer<ffi::F32>> out, ffi::Span<const int64_t> geo) {
  Geo g;
  if (auto err = CheckGeometry(geo, a.dimensions(), w.dimensions(), out->dimensions(),
                               backward_data, &g);
      err.failure()) {
    return err;
  }
  try {
    void* src = backward_data ? out->typed_data() : a.typed_data();
    void* dst = backward_data ? a.typed_data() : out->typed_data();
    return Run(*GetPlan(g, backward_data), src, w.typed_data(), dst, backward_data);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> geo) {
  return Handle(false, x, w, y, geo);
}

ffi::Error BackwardDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> geo) {
  return Handle(true, dy, w, dx, geo);
}

// Backward weights: x [N,H,W,C], dy [N,OH,OW,O] -> dw [KH,KW,I,O].
ffi::Error BackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, ffi::Span<const int64_t> geo) {
  Geo g;
  if (auto err = CheckGeometry(geo, x.dimensions(), dw->dimensions(), dy.dimensions(), false,
                               &g);
      err.failure()) {
    return err;
  }
  try {
    return RunWeights(*GetWeightsPlan(g), x.typed_data(), dy.typed_data(), dw->typed_data());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RobustjaxConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("geo"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RobustjaxConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("geo"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RobustjaxConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("geo"));

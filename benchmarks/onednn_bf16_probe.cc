// Does oneDNN have a bf16 convolution on this CPU? Build and run (paths from robustjax.kernels.build):
//   INC/LIB: .venv/bin/python -c "from robustjax.kernels import build; print(build._find_onednn())"
//   g++ -O2 -std=c++17 -I$INC benchmarks/onednn_bf16_probe.cc -L$LIBDIR -l:libdnnl.so.3 -Wl,-rpath,$LIBDIR -o /tmp/probe && /tmp/probe
// Prints the ISA oneDNN detects, the f32 implementation and time of a 128x64x32x32 3x3 conv,
// and whether a bf16 primitive descriptor can be created (results: benchmarks/results/bf16_speed.md).
#include "oneapi/dnnl/dnnl.hpp"
#include <iostream>
#include <chrono>
using namespace dnnl; using tag = memory::format_tag; using dt = memory::data_type;
int main(){
  engine eng(engine::kind::cpu,0); stream s(eng);
  std::cout << "isa: " << (int)get_effective_cpu_isa() << "\n";
  for (dt t : {dt::f32, dt::bf16}) {
    memory::dims src{128,64,32,32}, wei{64,64,3,3}, dst{128,64,32,32};
    auto sd = memory::desc(src,t,tag::any), wd = memory::desc(wei,t,tag::any), dd=memory::desc(dst, t==dt::bf16?dt::bf16:dt::f32, tag::any);
    try {
      auto pd = convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct, sd, wd, dd, {1,1},{1,1},{1,1});
      std::cout << (t==dt::bf16?"bf16":"f32") << " impl: " << pd.impl_info_str() << "\n";
      memory a(pd.src_desc(),eng), b(pd.weights_desc(),eng), c(pd.dst_desc(),eng);
      convolution_forward p(pd);
      p.execute(s,{{DNNL_ARG_SRC,a},{DNNL_ARG_WEIGHTS,b},{DNNL_ARG_DST,c}}); s.wait();
      auto t0=std::chrono::steady_clock::now(); int n=3;
      for(int i=0;i<n;i++){p.execute(s,{{DNNL_ARG_SRC,a},{DNNL_ARG_WEIGHTS,b},{DNNL_ARG_DST,c}}); s.wait();}
      double ms=std::chrono::duration<double,std::milli>(std::chrono::steady_clock::now()-t0).count()/n;
      double gf = 2.0*128*64*32*32*64*9/1e9; std::cout << "  " << ms << " ms, " << gf/(ms/1e3) << " GFLOP/s\n";
    } catch (dnnl::error &e) { std::cout << (t==dt::bf16?"bf16":"f32") << " unsupported: " << e.what() << "\n"; }
  }
}

#include "util/trace.hpp"

#ifdef SLEARN_WITH_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace slearn {

#ifdef SLEARN_WITH_CUDA
TraceRange::TraceRange(const char* name) { nvtxRangePushA(name); }
TraceRange::~TraceRange() { nvtxRangePop(); }
#else
TraceRange::TraceRange(const char*) {}
TraceRange::~TraceRange() = default;
#endif

}  // namespace slearn

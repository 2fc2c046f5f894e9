// Small helpers shared by the facilities: the monotonic clock.
#ifndef PMP_UTIL_H_
#define PMP_UTIL_H_

#include <time.h>

#include <cstdint>

namespace pmp {

inline int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline int64_t NowMs() { return NowNs() / 1000000; }

// A timeout longer than this (about 30 years) is treated as none: its deadline
// in NowNs() nanoseconds would overflow.
constexpr int64_t kNoDeadlineMs = 1'000'000'000'000;

}  // namespace pmp

#endif  // PMP_UTIL_H_

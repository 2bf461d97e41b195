// How both shim files hand a caught C++ exception to Rust: a malloc'ed copy of its message,
// which the Rust side frees with `sm_free_error` (aten_ops.cpp).
#pragma once

#include <cstdlib>
#include <cstring>

inline char *sm_error_message(const char *what) {
  const size_t n = std::strlen(what) + 1;
  char *out = static_cast<char *>(std::malloc(n));
  if (out != nullptr) {
    std::memcpy(out, what, n);
  }
  return out;
}

#!/bin/sh
# Compiles native/*.cc as macOS would see them, syntax only, with gcc on Linux:
# the macOS branches (kqueue, __ulock_wait, getpeereid, the sem_timedwait
# stand-in...) are otherwise never compiled here. It needs an unpacked macOS
# SDK's usr/include (with c++/v1, the SDK's libc++), e.g. from
# github.com/mitchellh/zig-build-macos-sdk.
#   scripts/check-macos-syntax.sh /path/to/MacOSX.sdk/usr/include
# What it cannot tell: clang-only warnings, API availability by deployment
# target, linking, and anything at run time.
set -eu
SDK=${1:?usage: $0 <macOS SDK usr/include directory>}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODE_INCLUDE=${NODE_INCLUDE:-$(node -p "require('path').join(process.execPath, '../../include/node')")}
GCC_INCLUDE=$(gcc -print-file-name=include)
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
# gcc lacks clang's feature probes and nullability keywords, which the SDK's
# headers use; libc++ declares quick_exit with a clang-only attribute.
cat > "$SHIM/pre.h" <<'H'
#ifndef __has_feature
#define __has_feature(x) 0
#endif
#ifndef __has_extension
#define __has_extension(x) 0
#endif
#ifndef __has_builtin
#define __has_builtin(x) 0
#endif
#define _Nullable
#define _Nonnull
#define _Null_unspecified
#define __nullable
#define __nonnull
#define __null_unspecified
#ifdef __cplusplus
#include <stdlib.h>
extern "C" { [[noreturn]] void quick_exit(int); int at_quick_exit(void (*)(void)); }
#endif
H
status=0
for arch in __x86_64__ __arm64__; do
  extra=""
  [ "$arch" = __arm64__ ] && extra="-U__x86_64__ -U__amd64__ -U__amd64 -U__x86_64 -D__aarch64__ -D__arm64__ -D__LP64__"
  for f in "$ROOT"/native/*.cc; do
    # shellcheck disable=SC2086
    if ! g++ -std=c++17 -fsyntax-only -nostdinc -nostdinc++ \
      -U__linux__ -U__linux -Ulinux -U__gnu_linux__ -U__unix__ -U__unix -Uunix -U__ELF__ \
      -D__APPLE__ -D__MACH__ -D__APPLE_CC__=6000 -D__LITTLE_ENDIAN__=1 $extra \
      -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED \
      -DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS \
      -Wall -Wextra -Wno-unused-parameter -Wno-attributes \
      -include "$SHIM/pre.h" \
      -isystem "$SDK/c++/v1" -isystem "$SDK" -isystem "$GCC_INCLUDE" \
      -isystem "$NODE_INCLUDE" -I "$ROOT/node_modules/node-addon-api" "$f"; then
      echo "FAILED: $f ($arch)" >&2
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "native/*.cc: no errors as macOS (x86-64, arm64) sees them"
exit $status

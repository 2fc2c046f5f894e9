// POSIX shared memory, syscall-shaped: policy (names, sizes, who unlinks) is the
// TypeScript layer's.
//
//   shmOpen(name, create, exclusive, mode) -> fd      (close-on-exec)
//   shmUnlink(name)
//   ftruncate(fd, size); fstatSize(fd) -> size
//   new Mapping(fd, size)  .buffer: ArrayBuffer over MAP_SHARED memory
//                          (callers keep size <= buffer.constants.MAX_LENGTH:
//                          N-API aborts the process on a longer external buffer)
//                          .unmap(): detaches .buffer (every view over it becomes
//                          length 0) and munmaps. Idempotent; also done by GC.
//
// The ArrayBuffer is external and not shared in V8's sense (N-API cannot make a
// SharedArrayBuffer over foreign memory): Atomics read-modify-write operations
// work on it and are real atomic instructions across processes, but
// Atomics.wait does not, which is why waiting is native (futex.cc).
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "addon.h"
#include "errors.h"

namespace pmp {

namespace {

std::string NameArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "name must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (name.find('\0') != std::string::npos) throw Napi::TypeError::New(info.Env(), "name must not contain NUL");
  return name;
}

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), "fd must be >= 0");
  return fd;
}

size_t SizeArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "size must be a number");
  double size = info[i].As<Napi::Number>().DoubleValue();
  if (!(size >= 0) || size > 9007199254740991.0) throw Napi::RangeError::New(info.Env(), "size out of range");
  return static_cast<size_t>(size);
}

Napi::Value ShmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = NameArg(info, 0);
  bool create = info.Length() > 1 && info[1].ToBoolean();
  bool exclusive = info.Length() > 2 && info[2].ToBoolean();
  mode_t mode = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() & 07777 : 0600;
  int flags = O_RDWR | (create ? O_CREAT : 0) | (exclusive ? O_EXCL : 0);
  int fd = RetryEintr([&] { return shm_open(name.c_str(), flags, mode); });
  if (fd < 0) ThrowSystemError(env, errno, "shm_open", name);
  // No fcntl(FD_CLOEXEC) here: POSIX requires shm_open to set it (glibc,
  // musl and macOS do), and a create+attach cycle is a dozen syscalls in all.
  if (create) {
    // The umask must not weaken or widen what the caller asked for.
    fchmod(fd, mode);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value ShmUnlink(const Napi::CallbackInfo& info) {
  std::string name = NameArg(info, 0);
  if (shm_unlink(name.c_str()) != 0) ThrowSystemError(info.Env(), errno, "shm_unlink", name);
  return info.Env().Undefined();
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  size_t size = SizeArg(info, 1);
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) != 0) {
    ThrowSystemError(info.Env(), errno, "ftruncate");
  }
  return info.Env().Undefined();
}

Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSystemError(info.Env(), errno, "fstat");
  return Napi::Number::New(info.Env(), static_cast<double>(st.st_size));
}

// The memory outlives the Mapping object if JS still holds the ArrayBuffer, so
// the region is owned by a small record shared by unmap() and the finalizer.
struct Region {
  void* addr = nullptr;
  size_t length = 0;
  bool mapped = false;
  bool buffer_alive = false;
  bool owner_alive = false;

  void Unmap() {
    if (mapped) {
      munmap(addr, length);
      mapped = false;
    }
  }
  void MaybeDelete() {
    if (!buffer_alive && !owner_alive) delete this;
  }
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {InstanceMethod<&Mapping::UnmapMethod>("unmap"),
                        InstanceAccessor<&Mapping::Buffer>("buffer"),
                        InstanceAccessor<&Mapping::Length>("length")});
  }

  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0);
    size_t size = SizeArg(info, 1);
    if (size == 0) throw Napi::RangeError::New(env, "cannot map 0 bytes");
    void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) ThrowSystemError(env, errno, "mmap");
    region_ = new Region();
    region_->addr = addr;
    region_->length = size;
    region_->mapped = true;
    region_->owner_alive = true;
    region_->buffer_alive = true;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, addr, size, Finalize, region_);
    buffer_ = Napi::Persistent(ab);
  }

  ~Mapping() override {
    if (region_ != nullptr) {
      region_->owner_alive = false;
      region_->MaybeDelete();
    }
  }

 private:
  static void Finalize(Napi::Env env, void* data, Region* region) {
    region->Unmap();
    region->buffer_alive = false;
    region->MaybeDelete();
  }

  Napi::Value UnmapMethod(const Napi::CallbackInfo& info) {
    if (region_ != nullptr && region_->mapped) {
      // Detach first: after this no JS view can reach the address range.
      if (!buffer_.IsEmpty()) {
        Napi::ArrayBuffer ab = buffer_.Value();
        if (!ab.IsDetached()) ab.Detach();
      }
      region_->Unmap();
    }
    return info.Env().Undefined();
  }

  Napi::Value Buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }

  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), region_ != nullptr && region_->mapped ? static_cast<double>(region_->length) : 0);
  }

  Region* region_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

}  // namespace

void InitShm(Napi::Env env, Napi::Object exports, AddonData* data) {
  exports.Set("shmOpen", Napi::Function::New<ShmOpen>(env, "shmOpen"));
  exports.Set("shmUnlink", Napi::Function::New<ShmUnlink>(env, "shmUnlink"));
  exports.Set("ftruncate", Napi::Function::New<Ftruncate>(env, "ftruncate"));
  exports.Set("fstatSize", Napi::Function::New<FstatSize>(env, "fstatSize"));
  exports.Set("Mapping", Mapping::Define(env));
}

}  // namespace pmp

{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
    "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-fstack-protector-strong",
                  "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                  "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: a callback into a worker thread
    # that is being terminated (a wait that ends as worker.terminate() runs) gets
    # napi_pending_exception; without it node-addon-api rethrows that as a C++
    # exception from the thread-safe function's dispatcher, and the whole
    # process aborts ("terminate called after throwing Napi::Error").
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
                "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "xcode_settings": {
      "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
      "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
      "MACOSX_DEPLOYMENT_TARGET": "11.0",
      "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
      "OTHER_CPLUSPLUSFLAGS": ["-fstack-protector-strong", "-Wall", "-Wextra", "-Werror",
                               "-Wno-unused-parameter"]
    }
  },
  "targets": [
    {
      "target_name": "posix_multiprocessing",
      "sources": [
        "native/addon.cc",
        "native/process.cc",
        "native/pipe.cc",
        "native/shm.cc",
        "native/futex.cc",
        "native/futex_service.cc",
        "native/semaphore.cc",
        "native/fdshare.cc",
        "native/reaper.cc",
        "native/tracker.cc",
        "native/forkserver.cc"
      ],
      "conditions": [
        ["OS=='linux'", { "libraries": ["-lrt", "-lpthread"] }]
      ]
    }
  ]
}

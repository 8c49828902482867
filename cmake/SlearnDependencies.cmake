# Every dependency is a Debian package installed by launch/setup.sh; none is vendored.
find_package(OpenMP REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C CXX)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)

# OpenBLAS: prefer the OpenMP build so BLAS and our own loops share one thread pool
# instead of two pools spinning against each other.
find_library(SLEARN_OPENBLAS_LIBRARY NAMES openblas
  PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp
  NO_DEFAULT_PATH)
if(NOT SLEARN_OPENBLAS_LIBRARY)
  find_library(SLEARN_OPENBLAS_LIBRARY NAMES openblas REQUIRED)
endif()
find_path(SLEARN_CBLAS_INCLUDE_DIR NAMES cblas.h
  PATHS /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/aarch64-linux-gnu/openblas-openmp
  PATH_SUFFIXES openblas REQUIRED)
add_library(slearn::blas INTERFACE IMPORTED)
target_link_libraries(slearn::blas INTERFACE ${SLEARN_OPENBLAS_LIBRARY})
target_include_directories(slearn::blas INTERFACE ${SLEARN_CBLAS_INCLUDE_DIR})
message(STATUS "slearn: OpenBLAS ${SLEARN_OPENBLAS_LIBRARY}")

set(SLEARN_CUDA_ENABLED OFF)
if(NOT SLEARN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(SLEARN_CUDA_ENABLED ON)
  elseif(SLEARN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SLEARN_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
if(SLEARN_CUDA_ENABLED)
  # The kernels are compiled for these architectures (sm_80 A100, sm_90 H100); e.g.
  # -DSLEARN_CUDA_ARCHITECTURES=90 halves the nvcc time when only one kind of GPU is in use.
  set(SLEARN_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures of the slearn kernels")
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES ${SLEARN_CUDA_ARCHITECTURES})
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
endif()
message(STATUS "slearn: CUDA backend ${SLEARN_CUDA_ENABLED}")

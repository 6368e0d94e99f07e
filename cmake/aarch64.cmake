# cmake/aarch64.cmake - cross-compile shoal for 64-bit ARM Linux (Raspberry
# Pi 3, 4 and 5 on a 64-bit OS) with Debian's gcc-aarch64-linux-gnu and the
# multiarch arm64 -dev packages (dpkg --add-architecture arm64), which live
# beside the host's in /usr/lib/aarch64-linux-gnu: there is no sysroot.
#
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64.cmake
#
# alone gives the copy-and-run edge build: every program statically linked
# (SHOAL_STATIC=ON) and the portable GEMM instead of OpenBLAS (SHOAL_BLAS=OFF;
# -DSHOAL_BLAS=ON links Debian's static OpenBLAS, ~12 MB more;
# -DSHOAL_STATIC=OFF links the distribution's shared libraries). ctest runs
# the tests under qemu-aarch64 (Debian's qemu-user); static programs need
# nothing else there (DESIGN.md saw dynamic threaded ones hang under qemu
# 7.2; with libc6:arm64 installed they ran here).
# scripts/cross.sh installs all of this, builds and tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(SHOAL_CROSS_TRIPLET aarch64-linux-gnu)
set(SHOAL_CROSS_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)

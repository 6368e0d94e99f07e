# cmake/cross-common.cmake - the part of a cross toolchain file
# (cmake/aarch64.cmake) that does not depend on the target: Debian's cross gcc
# for SHOAL_CROSS_TRIPLET, pkg-config reading only that architecture's .pc
# files, the edge defaults, and qemu-user as the emulator for ctest.
set(CMAKE_C_COMPILER ${SHOAL_CROSS_TRIPLET}-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE ${SHOAL_CROSS_TRIPLET})

# Headers and libraries come from the host's multiarch folders
# (/usr/include, /usr/lib/TRIPLET); programs (pkg-config) are the host's.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)

# pkg-config: the target's .pc files only, never the host's.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/${SHOAL_CROSS_TRIPLET}/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# The hot loops (update codecs, mask PRG, models) at -O3: GCC 12's -O2
# vectorizes only loops its "very cheap" cost model accepts, which leaves
# most codec loops scalar on NEON (docs/raspberry-pi.md, section 9).
set(SHOAL_HOT_O3 ON CACHE BOOL "Compile the hot-loop sources with -O3")

# The copy-and-run build unless the command line says otherwise.
set(SHOAL_STATIC ON CACHE BOOL "Link programs statically against the libraries' .a archives")
set(SHOAL_BLAS OFF CACHE BOOL "Dense and convolution layers through OpenBLAS (OFF: portable GEMM)")

# ctest (and the spawning tests' wrappers, see CMakeLists.txt) run the
# target's programs under qemu-user.
set(CMAKE_CROSSCOMPILING_EMULATOR ${SHOAL_CROSS_QEMU})

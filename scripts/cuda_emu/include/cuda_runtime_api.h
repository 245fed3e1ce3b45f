// CUDA emulation stub (scripts/cuda_emu).
#pragma once
#include <fastconv_cuda_emu.h>

// CUDA emulation stub (scripts/cuda_emu): launch and API error checks.
#pragma once
#include <fastconv_cuda_emu.h>
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::fcemu::launch_check()
#define C10_CUDA_CHECK(expression) ::fcemu::check_error((expression), #expression)

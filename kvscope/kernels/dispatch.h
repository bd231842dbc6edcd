// The model dtypes kvscope's kernels run: float32 and bfloat16.
#pragma once

#include <ATen/Dispatch.h>

#define KVSCOPE_DISPATCH(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

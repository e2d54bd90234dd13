#pragma once

/// \file
/// Everything remat offers, in one include.

#include "remat/checkpoint.h"
#include "remat/io/safetensors.h"
#include "remat/logging.h"
#include "remat/memory.h"
#include "remat/nn/checkpointable.h"
#include "remat/training_arguments.h"

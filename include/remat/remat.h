#pragma once

/// \file
/// Everything remat offers, in one include.

#include "remat/checkpoint.h"
#include "remat/data/causal_lm_dataset.h"
#include "remat/data/data_collator.h"
#include "remat/data/data_loader.h"
#include "remat/data/dataset.h"
#include "remat/data/distributed_sampler.h"
#include "remat/flops.h"
#include "remat/io/safetensors.h"
#include "remat/logging.h"
#include "remat/memory.h"
#include "remat/nn/checkpointable.h"
#include "remat/nn/linear.h"
#include "remat/nn/linear_cross_entropy.h"
#include "remat/optim/adamw.h"
#include "remat/optim/lr_scheduler.h"
#include "remat/training_arguments.h"

// Data-parallel training over MPI: every header of the optional component bitgrad::mpi
// (CMake: find_package(bitgrad CONFIG COMPONENTS mpi); link bitgrad::mpi). Nothing in the
// core includes these; see docs/distributed.md.
//
//   session.hpp           MPI_Init / MPI_Finalize guard
//   communicator.hpp      rank, size, barrier, broadcast, all-reduce, all-gather, requests
//   abort.hpp             an exception on one rank ends the whole job ("rank R: message")
//   agreement.hpp         same settings, dataset and parameters on every rank; broadcast
//   gradient_reducer.hpp  bucketed gradient averaging, overlapped with backward
//   backward_hook.hpp     the hook a container calls as each layer's gradients become final
//   sync_batch_norm.hpp   batch-norm statistics over the global batch
//   data_parallel.hpp     the trainer's gradient_sync over MPI (train/gradient_sync.hpp)
// and the sharding of the data: loader_options::shard_count / shard_index (data/loader.hpp).
#pragma once

#include <bitgrad/data/loader.hpp>
#include <bitgrad/dist/abort.hpp>
#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/backward_hook.hpp>
#include <bitgrad/dist/communicator.hpp>
#include <bitgrad/dist/data_parallel.hpp>
#include <bitgrad/dist/gradient_reducer.hpp>
#include <bitgrad/dist/session.hpp>
#include <bitgrad/dist/sync_batch_norm.hpp>

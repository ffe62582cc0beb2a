#include "transport/side_channel.h"

#include <cstdio>
#include <exception>
#include <mutex>

#include "core/error.h"

namespace shardload {
namespace {

std::mutex hook_mutex;
std::function<void()>& end_hook() {
  static auto* hook = new std::function<void()>();  // never destroyed: exit may still call it
  return *hook;
}
bool finalizing = false;

void run_end_hook() {
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(hook_mutex);
    hook = end_hook();
  }
  if (!hook) return;
  try {
    hook();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardload: background work at MPI's end failed: %s\n", e.what());
  }
}

int delete_channel(MPI_Comm, int, void* value, void*) {
  auto* channel = static_cast<SideChannel*>(value);
  run_end_hook();
  if (!finalizing) {  // while MPI_Finalize runs, what is left goes with MPI
    if (channel->background != MPI_COMM_NULL) MPI_Comm_free(&channel->background);
    delete channel;
  }
  return MPI_SUCCESS;
}

/// MPI_Finalize deletes MPI_COMM_SELF's attributes first, while MPI still works.
int finalize_started(MPI_Comm, int, void*, void*) {
  finalizing = true;
  run_end_hook();
  return MPI_SUCCESS;
}

int channel_keyval() {
  static int keyval = [] {
    int k = MPI_KEYVAL_INVALID;
    SHARDLOAD_MPI(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, delete_channel, &k, nullptr));
    int self_key = MPI_KEYVAL_INVALID;
    SHARDLOAD_MPI(
        MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, finalize_started, &self_key, nullptr));
    SHARDLOAD_MPI(MPI_Comm_set_attr(MPI_COMM_SELF, self_key, nullptr));
    return k;
  }();
  return keyval;
}

}  // namespace

SideChannel& side_channel(MPI_Comm comm, double timeout_seconds) {
  const int key = channel_keyval();
  void* value = nullptr;
  int found = 0;
  SHARDLOAD_MPI(MPI_Comm_get_attr(comm, key, &value, &found));
  if (found) return *static_cast<SideChannel*>(value);
  auto channel = std::make_unique<SideChannel>();
  channel->control = std::make_unique<Communicator>(comm, timeout_seconds, "shardload::save_async");
  channel->background = channel->control->duplicate();
  SHARDLOAD_MPI(MPI_Comm_set_attr(comm, key, channel.get()));
  return *channel.release();
}

void on_side_channel_end(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(hook_mutex);
  end_hook() = std::move(hook);
}

bool mpi_thread_multiple() {
  int provided = MPI_THREAD_SINGLE;
  SHARDLOAD_MPI(MPI_Query_thread(&provided));
  return provided >= MPI_THREAD_MULTIPLE;
}

}  // namespace shardload

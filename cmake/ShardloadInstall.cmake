# `cmake --install build --prefix P`: the library, its public headers under P/include/shardload
# (in the source layout, and the generated shardload/config.h), the
# CLI, and a CMake package whose target is shardload::shardload. Torch and MPI are found again by
# the consumer (find_dependency); HDF5, xxHash, nlohmann_json and NCCL stay private to the shared
# library.
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(SHARDLOAD_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/shardload")
set(SHARDLOAD_INSTALL_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}/shardload")

# The installed library finds LibTorch (and the torch wheel's CUDA libraries) where it was linked
# against them, and the CLI finds the library beside it.
set_target_properties(shardload PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON EXPORT_NAME shardload)
if(NOT SKBUILD)  # a wheel would hold a copy per symbolic link
  set_target_properties(shardload PROPERTIES
    VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
endif()
set_target_properties(shardload_cli PROPERTIES
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}"
  INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS shardload EXPORT shardloadTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
install(TARGETS shardload_cli RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
# Only the public headers: loader/shardload.h and what it includes, transitively (the consumer
# test, tests/consumer, builds against exactly these). The format drivers, the HDF5 layer and
# the transports stay inside the library.
set(SHARDLOAD_PUBLIC_HEADERS
  core/chunk_record.h core/dtype.h core/error.h core/shape.h core/small_vector.h core/value.h
  io/checkpoint_source.h io/chunk_reader.h io/h5/format.h io/h5/manifest.h io/tensor_file.h
  loader/async_save.h loader/checkpoint_info.h loader/load.h loader/load_options.h
  loader/partition.h
  loader/progress.h loader/save.h loader/shardload.h loader/training_state.h
  sharding/box.h sharding/index_check.h sharding/load_plan.h sharding/rank_groups.h
  sharding/save_plan.h)
foreach(header ${SHARDLOAD_PUBLIC_HEADERS})
  get_filename_component(dir "${header}" DIRECTORY)
  install(FILES "${PROJECT_SOURCE_DIR}/${header}"
          DESTINATION "${SHARDLOAD_INSTALL_INCLUDEDIR}/${dir}")
endforeach()
install(FILES "${PROJECT_BINARY_DIR}/generated/shardload/config.h"
        DESTINATION "${SHARDLOAD_INSTALL_INCLUDEDIR}/shardload")

install(EXPORT shardloadTargets NAMESPACE shardload::
        DESTINATION "${SHARDLOAD_INSTALL_CMAKEDIR}")
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/shardloadConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/shardloadConfig.cmake"
  INSTALL_DESTINATION "${SHARDLOAD_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/shardloadConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/shardloadConfig.cmake"
              "${PROJECT_BINARY_DIR}/shardloadConfigVersion.cmake"
        DESTINATION "${SHARDLOAD_INSTALL_CMAKEDIR}")

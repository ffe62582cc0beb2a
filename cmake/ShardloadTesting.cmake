# Test registration helpers. MPI launch flags live here, never in a shell: the root-run
# variables, --oversubscribe (2 cores here), and an optional TCP-only run that stands in for
# ranks on different hosts.
include_guard(GLOBAL)

set(SHARDLOAD_MPI_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
set(SHARDLOAD_MPI_PREFLAGS --oversubscribe ${MPIEXEC_PREFLAGS})

# shardload_add_mpi_test(NAME <name> RANKS <n>... [TCP] COMMAND <cmd> [args...])
# Registers <name>_np<n> for each rank count, and <name>_np2_tcp with --mca btl tcp,self.
function(shardload_add_mpi_test)
  cmake_parse_arguments(ARG "TCP" "NAME;TIMEOUT" "RANKS;COMMAND;LABELS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  foreach(n IN LISTS ARG_RANKS)
    add_test(NAME ${ARG_NAME}_np${n}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} ${SHARDLOAD_MPI_PREFLAGS}
                     ${ARG_COMMAND})
    set_tests_properties(${ARG_NAME}_np${n} PROPERTIES ENVIRONMENT "${SHARDLOAD_MPI_ENV}"
                         TIMEOUT ${ARG_TIMEOUT} PROCESSORS ${n} LABELS "mpi;${ARG_LABELS}")
  endforeach()
  if(ARG_TCP)
    add_test(NAME ${ARG_NAME}_np2_tcp
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 ${SHARDLOAD_MPI_PREFLAGS}
                     --mca btl tcp,self --mca btl_tcp_if_include lo ${ARG_COMMAND})
    set_tests_properties(${ARG_NAME}_np2_tcp PROPERTIES ENVIRONMENT "${SHARDLOAD_MPI_ENV}"
                         TIMEOUT ${ARG_TIMEOUT} PROCESSORS 2 LABELS "mpi;tcp;${ARG_LABELS}")
  endif()
endfunction()

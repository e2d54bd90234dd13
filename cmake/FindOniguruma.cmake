# FindOniguruma
# -------------
# Finds the Oniguruma regular expression library (Debian and Ubuntu:
# libonig-dev), the regex engine of Hugging Face tokenizers. Uses pkg-config
# for hints when it is available.
#
# Imported target:
#   Oniguruma::onig
# Result variables:
#   Oniguruma_FOUND, Oniguruma_INCLUDE_DIRS, Oniguruma_LIBRARIES, Oniguruma_VERSION

find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_Oniguruma QUIET oniguruma)
endif()

find_path(Oniguruma_INCLUDE_DIR NAMES oniguruma.h HINTS ${PC_Oniguruma_INCLUDE_DIRS})
find_library(Oniguruma_LIBRARY NAMES onig HINTS ${PC_Oniguruma_LIBRARY_DIRS})

if(Oniguruma_INCLUDE_DIR AND EXISTS "${Oniguruma_INCLUDE_DIR}/oniguruma.h")
  foreach(part MAJOR MINOR TEENY)
    file(STRINGS "${Oniguruma_INCLUDE_DIR}/oniguruma.h" line
         REGEX "^#define[ \t]+ONIGURUMA_VERSION_${part}[ \t]+[0-9]+")
    string(REGEX REPLACE ".*[ \t]([0-9]+).*" "\\1" Oniguruma_VERSION_${part} "${line}")
  endforeach()
  set(Oniguruma_VERSION
      "${Oniguruma_VERSION_MAJOR}.${Oniguruma_VERSION_MINOR}.${Oniguruma_VERSION_TEENY}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(
  Oniguruma
  REQUIRED_VARS Oniguruma_LIBRARY Oniguruma_INCLUDE_DIR
  VERSION_VAR Oniguruma_VERSION)

if(Oniguruma_FOUND)
  set(Oniguruma_INCLUDE_DIRS "${Oniguruma_INCLUDE_DIR}")
  set(Oniguruma_LIBRARIES "${Oniguruma_LIBRARY}")
  if(NOT TARGET Oniguruma::onig)
    add_library(Oniguruma::onig UNKNOWN IMPORTED)
    set_target_properties(
      Oniguruma::onig PROPERTIES IMPORTED_LOCATION "${Oniguruma_LIBRARY}"
                                 INTERFACE_INCLUDE_DIRECTORIES "${Oniguruma_INCLUDE_DIR}")
  endif()
endif()

mark_as_advanced(Oniguruma_INCLUDE_DIR Oniguruma_LIBRARY)

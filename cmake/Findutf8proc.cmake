# Findutf8proc
# ------------
# Finds utf8proc (Debian and Ubuntu: libutf8proc-dev), the Unicode library
# the tokenizer uses for NFC normalization. Uses pkg-config for hints when it
# is available.
#
# Imported target:
#   utf8proc::utf8proc
# Result variables:
#   utf8proc_FOUND, utf8proc_INCLUDE_DIRS, utf8proc_LIBRARIES, utf8proc_VERSION

find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_utf8proc QUIET libutf8proc)
endif()

find_path(utf8proc_INCLUDE_DIR NAMES utf8proc.h HINTS ${PC_utf8proc_INCLUDE_DIRS})
find_library(utf8proc_LIBRARY NAMES utf8proc HINTS ${PC_utf8proc_LIBRARY_DIRS})

if(utf8proc_INCLUDE_DIR AND EXISTS "${utf8proc_INCLUDE_DIR}/utf8proc.h")
  foreach(part MAJOR MINOR PATCH)
    file(STRINGS "${utf8proc_INCLUDE_DIR}/utf8proc.h" line
         REGEX "^#define[ \t]+UTF8PROC_VERSION_${part}[ \t]+[0-9]+")
    string(REGEX REPLACE ".*[ \t]([0-9]+).*" "\\1" utf8proc_VERSION_${part} "${line}")
  endforeach()
  set(utf8proc_VERSION
      "${utf8proc_VERSION_MAJOR}.${utf8proc_VERSION_MINOR}.${utf8proc_VERSION_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(
  utf8proc
  REQUIRED_VARS utf8proc_LIBRARY utf8proc_INCLUDE_DIR
  VERSION_VAR utf8proc_VERSION)

if(utf8proc_FOUND)
  set(utf8proc_INCLUDE_DIRS "${utf8proc_INCLUDE_DIR}")
  set(utf8proc_LIBRARIES "${utf8proc_LIBRARY}")
  if(NOT TARGET utf8proc::utf8proc)
    add_library(utf8proc::utf8proc UNKNOWN IMPORTED)
    set_target_properties(
      utf8proc::utf8proc PROPERTIES IMPORTED_LOCATION "${utf8proc_LIBRARY}"
                                    INTERFACE_INCLUDE_DIRECTORIES "${utf8proc_INCLUDE_DIR}")
  endif()
endif()

mark_as_advanced(utf8proc_INCLUDE_DIR utf8proc_LIBRARY)

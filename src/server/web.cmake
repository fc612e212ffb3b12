# The chat page (web/) embedded into the binary: web/build.mjs bundles web/src and its npm libraries (web/package.json,
# pinned by web/package-lock.json) into OUT/{index.html,app.js,style.css}, and embed_web.cmake turns those into byte
# arrays (web_assets.cpp, read through web_assets.h). Sets MOE_WEB_CPP.
# Without node or web/node_modules (after one `npm ci` attempt here), the binary embeds a page that says so and the
# build warns: a machine without a network can still build the engine and the API. -DMOE_WEB_BUNDLE=OFF asks for
# that page without trying.
option(MOE_WEB_BUNDLE "Bundle the chat page with node (web/build.mjs); OFF embeds a page saying it was not built" ON)
set(MOE_WEB_DIR ${PROJECT_SOURCE_DIR}/web)
set(MOE_WEB_OUT ${CMAKE_CURRENT_BINARY_DIR}/web)
set(MOE_WEB_CPP ${CMAKE_CURRENT_BINARY_DIR}/web_assets.cpp)
find_program(MOE_WEB_NODE node)
find_program(MOE_WEB_NPM npm)
set(_web_ready FALSE)
if(MOE_WEB_BUNDLE AND MOE_WEB_NODE)
  if(NOT EXISTS ${MOE_WEB_DIR}/node_modules/esbuild AND MOE_WEB_NPM)
    message(STATUS "moe: npm ci in web/ (the chat page's libraries)")
    execute_process(COMMAND ${MOE_WEB_NPM} ci --no-audit --no-fund WORKING_DIRECTORY ${MOE_WEB_DIR}
                    RESULT_VARIABLE _npm_rc TIMEOUT 300)
  endif()
  if(EXISTS ${MOE_WEB_DIR}/node_modules/esbuild)
    set(_web_ready TRUE)
  endif()
endif()

if(_web_ready)
  file(GLOB _web_src CONFIGURE_DEPENDS ${MOE_WEB_DIR}/src/*.js)
  add_custom_command(
    OUTPUT ${MOE_WEB_OUT}/index.html ${MOE_WEB_OUT}/app.js ${MOE_WEB_OUT}/style.css
    COMMAND ${MOE_WEB_NODE} ${MOE_WEB_DIR}/build.mjs ${MOE_WEB_OUT}
    DEPENDS ${_web_src} ${MOE_WEB_DIR}/index.html ${MOE_WEB_DIR}/style.css ${MOE_WEB_DIR}/build.mjs
            ${MOE_WEB_DIR}/package-lock.json
    COMMENT "Bundling the chat page (web/build.mjs)")
else()
  message(WARNING "moe: the chat page is not bundled (MOE_WEB_BUNDLE=${MOE_WEB_BUNDLE}, node: ${MOE_WEB_NODE}, "
                  "web/node_modules/esbuild missing?): the binary embeds a page saying so; the API is unaffected. "
                  "Run `npm ci` in web/ and reconfigure.")
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/web_missing.html ${MOE_WEB_OUT}/index.html COPYONLY)
  file(WRITE ${MOE_WEB_OUT}/app.js "")
  file(WRITE ${MOE_WEB_OUT}/style.css "")
endif()

add_custom_command(
  OUTPUT ${MOE_WEB_CPP}
  COMMAND ${CMAKE_COMMAND} -DOUT=${MOE_WEB_CPP} -DWEB_DIR=${MOE_WEB_OUT} -P ${CMAKE_CURRENT_SOURCE_DIR}/embed_web.cmake
  DEPENDS ${MOE_WEB_OUT}/index.html ${MOE_WEB_OUT}/app.js ${MOE_WEB_OUT}/style.css ${CMAKE_CURRENT_SOURCE_DIR}/embed_web.cmake
  COMMENT "Embedding the chat page")

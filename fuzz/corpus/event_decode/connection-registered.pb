›
˜
$01a214fc-9fac-7085-a407-dd995dbddf1cpg-localpostgres"127.0.0.1:5432*app2prefer:
readonlyapp_readonlyB
envprodJsession_rolePZpostgres
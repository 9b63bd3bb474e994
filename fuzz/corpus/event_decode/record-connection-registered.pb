
$01a214fc-9fad-73ad-a62a-85e5ab4cf73etenant (€Ğ•ÿ¼12system:›
˜
$01a214fc-9fac-7085-a407-dd995dbddf1cpg-localpostgres"127.0.0.1:5432*app2prefer:
readonlyapp_readonlyB
envprodJsession_rolePZpostgresB í	$7õº5D¬—&Ç¼Ïv
¤·"š>Mu¶nàJ f·l‚Îø<´ë=¦İV<
8Ğ=¥º~Œã‡ºzd